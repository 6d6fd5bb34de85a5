"""benchmarks/run.py's closing table: each of the performance targets beside this run's figure."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import run  # noqa: E402


def _runs(calls_per_s: float, cpu_s: float) -> list[dict[str, float]]:
    return [{"calls": 1000, "calls_per_s": calls_per_s, "server_cpu_s": cpu_s, "cpu_us_per_call": cpu_s * 1000}]


def test_the_table_reads_the_figures_the_benchmarks_summarise(capsys: pytest.CaptureFixture[str]) -> None:
    """A server 0.95 as fast at 0.80 of bare's CPU efficiency: calls/s met, CPU not; the figures
    come from `_summarize`'s own result, as the runner hands them over."""
    summary = run._summarize("server", {"bare": _runs(1000, 0.200), "callstate": _runs(950, 0.250)}, server_cpu=True)
    rows = {r["what"]: r for r in run.print_targets({"server": summary})}
    assert rows["server calls/s"]["value"] == pytest.approx(0.95) and rows["server calls/s"]["met"]
    assert rows["server CPU per call"]["value"] == pytest.approx(0.80) and not rows["server CPU per call"]["met"]
    out = capsys.readouterr().out
    assert "server CPU per call" in out and "NOT MET" in out and "k6" not in out   # only what ran


@pytest.mark.parametrize(("value", "met"), [(1.5, True), (1.49, True), (1.51, False)])
def test_a_lower_is_better_target_is_met_at_or_below_it(value: float, met: bool) -> None:
    rows = run.print_targets({"held": {"cancel_all_ratio": value, "memory_ratio": 1.0}})
    assert rows[0]["what"].startswith("cancel-all") and rows[0]["met"] is met


def test_every_target_names_a_benchmark_the_runner_runs() -> None:
    """k6's two results (no id, id sent) both come from `k6`."""
    benches = {bench for bench, *_ in run.TARGETS}
    assert benches - {"k6_call_id"} <= {"server", "k6", "client", "cancel", "held", "pipes"}
