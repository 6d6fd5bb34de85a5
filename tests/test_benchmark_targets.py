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


def test_a_figure_a_hair_under_its_line_does_not_print_as_the_line(capsys: pytest.CaptureFixture[str]) -> None:
    """0.8995 against 0.9 is not met, and the table shows why (it once printed "0.90 ... NOT MET")."""
    summary = run._summarize("server", {"bare": _runs(1000, 0.200), "callstate": _runs(899.5, 0.200)}, server_cpu=True)
    rows = {r["what"]: r for r in run.print_targets({"server": summary})}
    assert not rows["server calls/s"]["met"]
    line = next(x for x in capsys.readouterr().out.splitlines() if "server calls/s" in x)
    assert " 0.899 " in line and "NOT MET" in line


def test_every_target_names_a_benchmark_the_runner_runs() -> None:
    """k6's two results (no id, id sent) both come from `k6`."""
    benches = {bench for bench, *_ in run.TARGETS}
    assert benches - {"k6_call_id"} <= {"server", "k6", "client", "cancel", "held", "pipes"}


def test_the_floor_stands_beside_a_target_and_says_when_it_is_out_of_reach(capsys: pytest.CaptureFixture[str]) -> None:
    """k6 with the floor measured: a floor that misses the target marks it out of reach; one that
    meets it does not. A benchmark without a floor prints none."""
    runs = {"bare": _runs(1000, 0.200), "floor": _runs(820, 0.230), "callstate": _runs(700, 0.290)}
    summary = run._summarize("k6", runs, server_cpu=True)
    assert summary["floor_throughput_ratio"] == pytest.approx(0.82)
    assert summary["floor_cpu_ratio"] == pytest.approx(0.200 / 0.230)
    rows = {r["what"]: r for r in run.print_targets({"k6": summary, "held": {
        "cancel_all_ratio": 2.0, "memory_ratio": 1.0, "floor_cancel_all_ratio": 1.4, "floor_memory_ratio": 1.0}})}
    assert rows["k6, no id: calls/s"]["floor"] == pytest.approx(0.82) and not rows["k6, no id: calls/s"]["floor_meets"]
    assert rows["cancel-all of the held calls (x bare)"]["floor_meets"]
    out = capsys.readouterr().out
    assert "floor 0.820: out of reach" in out and "floor 1.400\n" in out
    assert "floor" not in run.print_targets({"server": run._summarize(
        "server", {"bare": _runs(1000, 0.2), "callstate": _runs(950, 0.25)}, server_cpu=True)})[0]


def test_every_floor_stands_beside_a_target() -> None:
    """FLOORS is keyed by a target's label: a label changed in TARGETS alone would drop its floor
    from the table without a word (print_targets takes a missing floor for one that did not run)."""
    assert set(run.FLOORS) <= {what for _, what, *_ in run.TARGETS}
