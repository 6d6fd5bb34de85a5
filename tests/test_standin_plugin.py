"""The pytest plugin's `callstate_standin` fixture, through inner pytest runs (`pytester`):
configured by a marker, by ini options, and misconfigured."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(120)

INNER = '''
import grpc
import pytest

RULES_USED = "declined"


def charge(standin, order_id, metadata=()):
    method = standin.schema.method("shop.v1.Shop/Charge")
    with grpc.insecure_channel(standin.target) as channel:
        call = channel.unary_unary(method.path, request_serializer=method.request.SerializeToString,
                                   response_deserializer=method.response.FromString)
        return call(method.request(order_id=order_id), metadata=metadata, timeout=10)


@pytest.mark.callstate_standin(protos=["protos/shop/v1/shop.proto"], proto_path=["protos"], rules="rules.yaml")
def test_marker(callstate_standin):
    assert charge(callstate_standin, "fine").charge_id == "ok"
    with pytest.raises(grpc.RpcError) as declined:
        charge(callstate_standin, "decline-me", (("callstate-call-id", "pt-declined"),))
    assert dict(declined.value.trailing_metadata())["callstate-code"] == "4321"
    assert [c.call_id for c in callstate_standin.calls(rule=RULES_USED)] == ["pt-declined"]
    assert [e["state"] for e in callstate_standin.wait_history("pt-declined", timeout=30)] == ["D", "A", "End"]


def test_ini(callstate_standin):
    assert charge(callstate_standin, "fine").charge_id == "ok"
    assert len(callstate_standin.calls(method="shop.v1.Shop/*")) == 1


@pytest.mark.callstate_standin(protos=["protos/shop/v1/shop.proto"], proto_path=["protos"], rules="bad.yaml")
def test_bad_rules(callstate_standin):
    pass
'''

RULES = """\
rules:
  - name: declined
    method: shop.v1.Shop/Charge
    match: {request: {order_id: decline-me}}
    script: {outcome: abort, abort_code: 4321}
  - method: shop.v1.Shop/Charge
    script: {outcome: complete}
    reply: {charge_id: ok}
"""


def test_the_standin_fixture_by_marker_and_ini_and_a_bad_rules_file(pytester: pytest.Pytester) -> None:
    shutil.copytree(ROOT / "tests" / "protos", pytester.path / "protos")
    (pytester.path / "rules.yaml").write_text(RULES)
    (pytester.path / "bad.yaml").write_text("rules:\n  - method: shop.v1.Shop/Refund\n")
    pytester.makeini("""
[pytest]
timeout = 60
asyncio_default_fixture_loop_scope = function
callstate_protos = protos/shop/v1/shop.proto
callstate_proto_path = protos
callstate_rules = rules.yaml
""")
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA", timeout=100)
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*callstate: callstate_standin: *bad.yaml:2: rules[[]0[]].method: no method of the "
                                 "schema matches 'shop.v1.Shop/Refund'*"])
