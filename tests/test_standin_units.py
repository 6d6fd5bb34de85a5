"""The stand-in's pure parts: rules compiled against a schema (matching, errors naming the
file, line and field) and the method and rule carried by state entries in all three forms."""

from __future__ import annotations

import orjson
import pytest

from callstate.rules import RulesError, method_pattern, parse_rules
from callstate.schema import from_protos
from callstate.statelog import Entry, format_line, from_dict, proto_to_dict, to_dict, to_proto
from callstate.v1 import callstate_pb2 as pb
from tests.test_standin import PROTOS, SHOP


@pytest.fixture(scope="module")
def schema():   # type: ignore[no-untyped-def]
    return from_protos([SHOP], [PROTOS])


def test_entries_carry_their_method_and_rule_in_every_form() -> None:
    samples = [Entry(1.5, "server", "a", "D", None, "enter", "dispatch", method="shop.v1.Shop/Charge"),
               Entry(2.5, "server", "a", "End", "A", "enter", "aborted", 4321, "ABORTED", "why",
                     method="shop.v1.Shop/Charge", rule='the "declined" rule\\n'),
               Entry(3.5, "server", "b", "Push", "Push", "cancel_seen", cancel="abortive", method="s.S/T", rule="rules[3]")]
    for e in samples:
        d = to_dict(e)
        assert d["method"] == e.method and d.get("rule") == e.rule
        assert orjson.loads(format_line(e)) == d
        assert from_dict(d) == e
        assert proto_to_dict(to_proto(e)) == d
    assert "method" not in to_dict(Entry(1.0, "server", "c", "D", None, "enter", "dispatch"))


def test_method_patterns_match_whole_names_with_star_for_any_part() -> None:
    assert method_pattern("shop.v1.Shop/Charge").fullmatch("shop.v1.Shop/Charge")
    assert not method_pattern("shop.v1.Shop/Charge").fullmatch("shop.v1.Shop/ChargeX")
    assert not method_pattern("shop.v1.Shop/Charge").fullmatch("shopxv1.Shop/Charge")   # a dot is a dot
    assert method_pattern("shop.*/T*").fullmatch("shop.v1.Shop/Track")
    assert method_pattern("*").fullmatch("a.B/C")


def test_first_match_wins_with_request_subsets_metadata_and_defaults(schema) -> None:   # type: ignore[no-untyped-def]
    rules = parse_rules("""
rules:
  - name: eur-card
    method: shop.v1.Shop/Charge
    match:
      request: {amount: {currency: EUR}, card: {expiryMonth: 0}, tags: [a, b]}
      metadata: {X-Tenant: acme}
    script: {outcome: abort, abort_code: 1}
  - name: any-eur
    method: shop.v1.Shop/Charge
    match: {request: {amount: {currency: EUR, units: "5"}}}
  - name: everything
    method: "*"
""", schema)
    charge = schema.method("shop.v1.Shop/Charge").request
    eur = charge(amount={"currency": "EUR", "units": 5}, tags=["a", "b"], card={"number": "4111"})
    acme = {"x-tenant": "acme"}
    assert rules.first_match("shop.v1.Shop/Charge", acme, eur).label == "eur-card"
    assert rules.first_match("shop.v1.Shop/Charge", {"x-tenant": b"acme"}, eur).label == "eur-card"
    assert rules.first_match("shop.v1.Shop/Charge", {}, eur).label == "any-eur"   # metadata must hold too
    eur.tags.append("c")   # a repeated field matches as a whole
    assert rules.first_match("shop.v1.Shop/Charge", acme, eur).label == "any-eur"
    eur.card.expiry_month = 3   # {expiryMonth: 0} matches only the default
    del eur.tags[2]
    assert rules.first_match("shop.v1.Shop/Charge", acme, eur).label == "any-eur"
    eur.card.expiry_month = 0
    eur.ClearField("card")   # a sub-message the request leaves unset does not match a pattern naming it
    assert rules.first_match("shop.v1.Shop/Charge", acme, eur).label == "any-eur"
    usd = charge(amount={"currency": "USD", "units": 5})
    assert rules.first_match("shop.v1.Shop/Charge", acme, usd).label == "everything"
    assert rules.first_match("shop.v1.Shop/Chat", {}, None).label == "everything"
    assert rules.first_match("shop.v1.Shop/Upload", {}, None).script is None
    assert rules.count == 3


def test_scripts_are_of_the_methods_kind_and_checked_for_it(schema) -> None:   # type: ignore[no-untyped-def]
    rules = parse_rules('{"rules": [{"method": "shop.v1.Shop/*", "script": {"outcome": "hold", "on_cancel": "complete"},'
                        ' "reply": {}}]}', schema)
    assert isinstance(rules.by_method["shop.v1.Shop/Charge"][0].script, pb.Script)
    assert isinstance(rules.by_method["shop.v1.Shop/Track"][0].script, pb.PipeScript)
    with pytest.raises(RulesError, match=r"rules\[0\] \(shop.v1.Shop/Charge\).script.at: not a field of Script"):
        parse_rules("rules:\n  - method: 'shop.v1.Shop/*'\n    script: {at: after-out, at_count: 1}\n", schema)


@pytest.mark.parametrize("text, message", [
    ("rules:\n  - method: shop.v1.Shop/Charge\n  - method: x.Y/Z\n", r"^f.yaml:3: rules\[1\].method: no method"),
    ("rules:\n  - method: shop.v1.Shop/Charge\n    colour: red\n", r"^f.yaml:2: rules\[0\]: unknown key 'colour'"),
    ("rules:\n  - {method: shop.v1.Shop/Charge, match: {body: {}}}\n", r"match: unknown key 'body'"),
    ("rules:\n  - {method: shop.v1.Shop/Charge, script: {outcome: abort, abort_code: 3}, mix: {abort: 1}}\n",
     "script.outcome and mix both choose the outcome"),
    ("rules:\n  - {method: shop.v1.Shop/Charge, mix: {crash: 1}}\n", r"rules\[0\].mix: mix entry 'crash=1': unknown name"),
    ("rules:\n  - {method: shop.v1.Shop/Charge, reply: {captured: {units: many}}}\n",
     r"reply: shop.v1.ChargeReply: Failed to parse captured field"),
    ("rules: {method: x}\n", r"^f.yaml:1: rules must be a list"),
    ("other: []\n", "unknown key 'other'"),
    ("rules:\n  - method: shop.v1.Shop/Charge\n    name: ''\n", r"rules\[0\].name: must be a non-empty string"),
    ("{\n  \"rules\": [\n    {\"method\": \"shop.v1.Shop/Charge\"},\n    {\"method\": \"nope\"}\n  ]\n}\n",
     r"^f.yaml:4: rules\[1\].method"),
])
def test_bad_rules_name_the_file_line_and_field(schema, text: str, message: str) -> None:   # type: ignore[no-untyped-def]
    with pytest.raises(RulesError, match=message):
        parse_rules(text, schema, source="f.yaml")


def test_an_empty_rules_file_is_no_rules(schema) -> None:   # type: ignore[no-untyped-def]
    assert parse_rules("", schema).count == 0
    assert parse_rules("rules: []\n", schema).first_match("shop.v1.Shop/Charge", {}, None) is None


def test_a_rules_file_is_reloaded_only_once_a_change_holds_still(schema, tmp_path) -> None:   # type: ignore[no-untyped-def]
    import io
    import os
    from types import SimpleNamespace

    from callstate.script import Limits
    from callstate.server.standin import RulesFile

    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - {method: shop.v1.Shop/Charge, reply: {charge_id: one}}\n")
    standin = SimpleNamespace(schema=schema, emulator=SimpleNamespace(config=SimpleNamespace(limits=Limits())),
                              rules=parse_rules(path.read_text(), schema))
    err = io.StringIO()
    watcher = RulesFile(path, standin, err)   # type: ignore[arg-type]
    assert not watcher.check()                # unchanged

    def stamp_anew() -> None:   # a new mtime even within the file system's clock tick
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))

    path.write_text("rul")                    # truncated and half written, as an editor saves
    stamp_anew()
    assert not watcher.check()                # seen once: not taken yet
    path.write_text("rules:\n  - {method: shop.v1.Shop/Charge, reply: {charge_id: two}}\n")
    stamp_anew()
    assert not watcher.check()                # changed again: wait for it to hold still
    assert watcher.check()                    # held still: in force
    assert standin.rules.by_method["shop.v1.Shop/Charge"][0].reply.charge_id == "two"
    assert watcher.reloads == 1 and watcher.failures == 0 and "reloaded (1 rule for 1 method)" in err.getvalue()
    path.write_text("rules:\n  - {method: shop.v1.Shop/Nope}\n")
    stamp_anew()
    assert not watcher.check() and not watcher.check()   # a bad edit: the last good rules stay
    assert standin.rules.by_method["shop.v1.Shop/Charge"][0].reply.charge_id == "two"
    assert watcher.failures == 1 and "not reloaded, the last good rules stay" in err.getvalue()
