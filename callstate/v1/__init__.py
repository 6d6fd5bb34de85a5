"""Generated protobuf and gRPC stubs for callstate.v1 (see tools/genproto.py)."""
