"""Bytes in a message's proto JSON form: base64 text, as protobuf's other runtimes require.

protobuf's Python parser decodes a bytes field with `base64.urlsafe_b64decode`, which drops
every character outside the alphabet: `"photo": "!!"` became empty bytes and `"hello world"`
other bytes than meant, and the request went out (grpcurl and buf curl refuse both). A Python
`bytes` value in a dict was decoded as if it were base64 text too (`b"\\x00\\x01"` became
`b""`). `base64_bytes` walks the JSON beside its message descriptor: it names the first bytes
value that is not base64 (the standard or the URL-safe alphabet, padded or not) and encodes
the Python bytes objects it finds at bytes fields, which then mean themselves.

The same walk refuses a JSON `true` or `false` at a field that is a number or an enum
(`NotABool`): protobuf's parser reads it as 1 or 0, so `"tier": true` sent the enum's value 1.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

_BASE64 = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")
_BYTES_VALUE = "google.protobuf.BytesValue"
_ANY = "google.protobuf.Any"
_WELL_KNOWN = "google.protobuf."


class NotBase64(ValueError):
    """A bytes value in JSON that is not base64: `path` names the field, `value` is the text."""

    def __init__(self, path: str, value: str) -> None:
        super().__init__(f"{path}: {value!r} is not base64")
        self.path, self.value = path, value


class NotABool(ValueError):
    """A JSON bool at a field of a number or enum type: `path` names the field."""

    def __init__(self, path: str, value: bool, field: FieldDescriptor) -> None:
        kind = (f"an enum ({field.enum_type.full_name})" if field.enum_type is not None
                else f"a {_TYPE_NAMES.get(field.type, 'number')}")
        super().__init__(f"{path}: {'true' if value else 'false'} is a JSON bool, and the field is {kind}")
        self.path = path


_TYPE_NAMES = {value: name.removeprefix("TYPE_").lower() for name, value in vars(FieldDescriptor).items()
               if name.startswith("TYPE_")}


def is_base64(text: str) -> bool:
    """Text in either base64 alphabet, padded or not."""
    return _BASE64.fullmatch(text) is not None and len(text.rstrip("=")) % 4 != 1


def base64_bytes(data: Any, desc: Descriptor, path: str = "") -> Any:
    """`data` (the JSON form of a `desc` message, as parsed) with each bytes value as base64 text:
    a Python bytes object encoded, text checked (NotBase64 for the first that is not base64).
    Values of other JSON types are left for protobuf's parser to refuse."""
    if desc.full_name == _BYTES_VALUE:   # its JSON is the base64 text itself
        return _bytes_value(data, path or "value")
    if desc.full_name == _ANY:
        return _in_any(data, desc, path)
    if desc.full_name.startswith(_WELL_KNOWN) or not isinstance(data, dict):   # Struct, Timestamp, ...: no bytes
        return data
    out = {}
    for key, value in data.items():
        field = desc.fields_by_name.get(key) or next((f for f in desc.fields if f.json_name == key), None)
        # an unknown key (an extension, "[pkg.ext]", or a typo protobuf names) is left as it is
        out[key] = value if field is None else _in_field(field, value, f"{path}.{field.name}" if path else field.name)
    return out


def _in_field(field: FieldDescriptor, value: Any, where: str) -> Any:
    sub = field.message_type
    if sub is not None and sub.GetOptions().map_entry:
        item = sub.fields_by_name["value"]
        return ({key: _in_value(item, each, f"{where}[{key}]") for key, each in value.items()}
                if isinstance(value, dict) else value)
    if field.is_repeated and isinstance(value, list):
        return [_in_value(field, each, f"{where}[{i}]") for i, each in enumerate(value)]
    return _in_value(field, value, where)


def _in_value(field: FieldDescriptor, value: Any, where: str) -> Any:
    if isinstance(value, bool) and field.message_type is None and field.type != FieldDescriptor.TYPE_BOOL:
        raise NotABool(where, value, field)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return _bytes_value(value, where)
    if field.message_type is not None:
        return base64_bytes(value, field.message_type, where)
    return value


def _bytes_value(value: Any, where: str) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, str) and not is_base64(value):
        raise NotBase64(where, value)
    return value


def _in_any(data: Any, desc: Descriptor, path: str) -> Any:
    if not isinstance(data, dict) or not isinstance(data.get("@type"), str):
        return data
    try:   # a type the pool lacks: protobuf's parser says so
        packed = desc.file.pool.FindMessageTypeByName(data["@type"].rpartition("/")[2])
    except KeyError:
        return data
    if packed.full_name.startswith(_WELL_KNOWN):   # packed with its own JSON under "value"
        if "value" not in data:
            return data
        return {**data, "value": base64_bytes(data["value"], packed, f"{path}.value" if path else "value")}
    rest = base64_bytes({k: v for k, v in data.items() if k != "@type"}, packed, path)
    return {"@type": data["@type"], **rest}
