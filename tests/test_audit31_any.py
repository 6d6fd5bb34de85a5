"""Fourth audit of the any-service feature, as a test engineer bringing a company's protos on
day one: many methods in long packages, `call --method --no-script` with the script options
users type out of habit, near-miss method names.

The tests whose docstring starts "Before:" failed before their fix."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT

SHOP = ROOT / "tests" / "protos"
SHOP_PROTO = ["--proto", "shop/v1/shop.proto", "--proto-path", str(SHOP)]
CHARGE, TRACK = "shop.v1.Shop/Charge", "shop.v1.Shop/Track"


@pytest.mark.parametrize("method, extra, named", [
    (CHARGE, ["--outcome", "abort", "--code", "4321"], "--outcome and --code"),
    (CHARGE, ["--outcome", "hold", "--cancel-after", "0.2"], "--outcome"),
    (CHARGE, ["--on-cancel", "ignore", "--delay", "1"], "--delay and --on-cancel"),
    (TRACK, ["--server-messages", "5", "--at", "after-out"], "--server-messages and --at")])
def test_call_no_script_refuses_the_script_options_it_would_drop(method: str, extra: list[str], named: str,
                                                                 refused_target: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Before: `call --method M --no-script --outcome abort --code 4321` sent no script, so the
    stand-in's rules (or --mix) decided and the call ended `final: 0 RPC_S_OK`, exit 0: the
    options typed were dropped without a word (`load --no-script` refuses its own)."""
    from callstate.cli import main

    assert main(["call", "--target", refused_target, "--method", method, *SHOP_PROTO, "--no-script", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"callstate call: error: {named}: with --no-script no script is sent, the server decides "
                   "the call's outcome (see callstate call --help)"), err
