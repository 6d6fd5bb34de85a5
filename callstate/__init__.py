"""callstate: the MS-RPC asynchronous call lifecycle, emulated over gRPC.

The lifecycle tables live in `callstate.lifecycle`; the server in
`callstate.server`, the client library in `callstate.client`.
"""

__version__ = "0.1.0"

# The public packages: callstate.client, callstate.server, callstate.schema, callstate.locust,
# callstate.pytest_plugin (each declares its names in __all__); the core modules below are
# imported by name (`from callstate import lifecycle`); logfile is their I/O edge (the state-log
# writer, reading logs).
__all__ = ["__version__", "cancel_points", "check", "codes", "lifecycle", "logfile", "pipe_script", "script", "statelog"]
