"""A user's own gRPC schema: loaded from .proto files, a descriptor set or reflection.

    from callstate.schema import from_protos
    schema = from_protos(["orders.proto"], ["protos/"])
    method = schema.method("orders.v1.Orders/Create")     # request/response classes, kind
"""

from callstate.schema.model import (Method, Schema, SchemaError, kind_of_shape, message_from_json,
                                    message_to_dict, message_to_json, normalise_method_name)
from callstate.schema.sources import from_descriptor_set, from_protos, from_reflection

__all__ = ["Method", "Schema", "SchemaError", "from_descriptor_set", "from_protos", "from_reflection",
           "kind_of_shape", "message_from_json", "message_to_dict", "message_to_json", "normalise_method_name"]
