"""`callstate_standin`: a stand-in of the user's own protos for one test (server/standin.py).

Configured by a marker or ini options (the marker wins), paths relative to the rootdir:

    @pytest.mark.callstate_standin(protos=["protos/shop/v1/shop.proto"], proto_path=["protos"],
                                   rules="tests/rules.yaml", mix="complete=100", max_hold=5)

    [pytest]
    callstate_protos = protos/shop/v1/shop.proto
    callstate_proto_path = protos
    callstate_rules = tests/rules.yaml
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import grpc

from callstate.pytest_plugin.servers import CONNECT_TIMEOUT, ServerUnavailable, ThreadServer, emulator_config
from callstate.v1 import callstate_pb2 as pb
from callstate.v1 import callstate_pb2_grpc as pb_grpc
from callstate.wire import OWN_SERVICE_PREFIXES

MARKER = "callstate_standin"
_schemas: dict[tuple[Any, ...], Any] = {}   # compiled once per session per set of files


class StandinServer(ThreadServer):
    """A ThreadServer standing in for the user's services: `.schema`, and `.calls(method=,
    rule=)`, the journal's summaries of its calls (ListCalls), to verify which rule answered."""

    schema: Any = None

    def calls(self, method: str = "", rule: str = "", limit: int = 1000) -> list[pb.CallSummary]:
        """The journal's calls of a method (`*` matches any part) and a rule. A method named
        without `*` must be one the server serves (a SchemaError names the nearest): a typo
        would find no call, and an assertion that there was none would pass."""
        if method and "*" not in method and not method.lstrip("/").startswith(OWN_SERVICE_PREFIXES):
            self.schema.method(method)
        with grpc.insecure_channel(self.target) as channel:
            reply = pb_grpc.JournalStub(channel).ListCalls(pb.ListCallsRequest(method=method, rule=rule, limit=limit),
                                                          timeout=CONNECT_TIMEOUT)
        return list(reply.calls)


def settings(marker_kwargs: dict[str, Any], ini: Any, root: Path) -> dict[str, Any]:
    """The fixture's configuration: the marker's keywords over the ini options."""
    def items(value: Any) -> list[str]:
        return value.split() if isinstance(value, str) else [str(p) for p in value or ()]

    def paths(value: Any) -> list[str]:
        return [str(root / p) for p in items(value)]

    kw = dict(marker_kwargs)
    proto_path = paths(kw.pop("proto_path", None) or ini("callstate_proto_path"))
    given, descriptor_set = _schema(kw, ini)
    # a proto from the rootdir, else, as protoc and grpcurl take it, below a proto_path (from_protos looks there)
    protos = [str(root / p) if (root / p).exists() or not proto_path else p for p in items(given)]
    rules = kw.pop("rules") if "rules" in kw else ini("callstate_rules") or None   # rules=None: none
    if protos and descriptor_set:
        raise ServerUnavailable("callstate_standin: protos and descriptor_set: give the schema one way")
    if not protos and not descriptor_set:
        raise ServerUnavailable("callstate_standin needs protos: @pytest.mark.callstate_standin(protos=[...]) or the "
                                "ini option callstate_protos")
    return {"protos": protos, "proto_path": proto_path,
            "descriptor_set": str(root / descriptor_set) if descriptor_set else None,
            "rules": str(root / rules) if rules else None, "config": kw}


def _schema(kw: dict[str, Any], ini: Any) -> tuple[Any, str | None]:
    """The protos and the descriptor set: one setting, the marker's (taken out of `kw`) when it
    names either, else the ini file's."""
    if "protos" in kw or "descriptor_set" in kw:
        return kw.pop("protos", None), kw.pop("descriptor_set", None) or None
    return ini("callstate_protos"), ini("callstate_descriptor_set") or None


def start_standin(log: Path, protos: Sequence[str], proto_path: Sequence[str], descriptor_set: str | None,
                  rules: str | None, config: dict[str, Any]) -> StandinServer:
    from callstate.files import load_rules
    from callstate.rules import RulesError
    from callstate.schema import SchemaError, from_descriptor_set, from_protos
    from callstate.server.app import ServerOptions

    key = (tuple(protos), tuple(proto_path), descriptor_set)
    try:
        if key not in _schemas:
            _schemas[key] = from_descriptor_set(descriptor_set) if descriptor_set else from_protos(protos, proto_path)
        schema = _schemas[key]
        emulator = emulator_config(config)
        if rules is not None:
            load_rules(rules, schema, emulator.limits)   # a bad file fails the test in one line
    except (SchemaError, RulesError, TypeError, ValueError) as exc:
        raise ServerUnavailable(f"callstate_standin: {exc}") from None
    options = ServerOptions(bind="127.0.0.1", port=0, log=log, emulator=emulator, schema=schema, rules=rules)
    srv = StandinServer(options)
    srv.schema = schema
    return srv.start()   # type: ignore[return-value]
