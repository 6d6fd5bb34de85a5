"""callstate: the MS-RPC asynchronous call lifecycle, emulated over gRPC.

The lifecycle tables live in `callstate.lifecycle`; the server in
`callstate.server`, the client library in `callstate.client`.
"""

__version__ = "0.1.0"
