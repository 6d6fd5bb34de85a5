"""callstate.server: the grpc.aio emulator, its journal and its scripts."""

from callstate.server.app import EmulatorServer, ServerOptions, serve
from callstate.server.emulator import EmulatorConfig
from callstate.server.journal import Journal

__all__ = ["EmulatorConfig", "EmulatorServer", "Journal", "ServerOptions", "serve"]
