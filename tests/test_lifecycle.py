"""The sans-IO core: every legal transition walked, every illegal one refused."""

from __future__ import annotations

import itertools

import pytest

from callstate.lifecycle import (END, INITIAL, SIDES, TABLES, Lifecycle, LifecycleError, is_legal, move_to_end,
                                 next_state)

ALL_MOVES = sorted({m for table in TABLES.values() for moves in table.values() for m in moves})

# The tables of docs/model.md, written out edge by edge so a change to the data is caught.
EXPECTED_EDGES = {
    "client": {("C", "started", "WComp"), ("C", "start_failed", "End"), ("C", "cancel", "Can"),
               ("Can", "cancel_issued", "WComp"), ("WComp", "complete", "Comp"), ("WComp", "cancel", "Can"),
               ("Comp", "completed", "End")},
    "server": {("D", "complete", "Comp"), ("D", "abort", "A"), ("D", "fatal", "End"),
               ("A", "aborted", "End"), ("Comp", "completed", "End")},
}


def edges(side: str) -> set[tuple[str, str, str]]:
    return {(s, m, t) for s, moves in TABLES[side].items() for m, t in moves.items()}


@pytest.mark.parametrize("side", SIDES)
def test_tables_are_the_spec(side: str) -> None:
    assert edges(side) == EXPECTED_EDGES[side]
    assert INITIAL[side] == ("C" if side == "client" else "D")
    assert TABLES[side][END] == {}


@pytest.mark.parametrize("side,state,move,target", sorted((s, *e) for s in SIDES for e in EXPECTED_EDGES[s]))
def test_every_legal_transition(side: str, state: str, move: str, target: str) -> None:
    assert next_state(side, state, move) == target
    assert is_legal(side, state, move, target)


@pytest.mark.parametrize("side,state,move", [
    (side, state, move) for side in SIDES for state in TABLES[side] for move in ALL_MOVES
    if move not in TABLES[side][state]])
def test_every_illegal_transition_is_refused_naming_side_state_move(side: str, state: str, move: str) -> None:
    with pytest.raises(LifecycleError) as info:
        next_state(side, state, move)
    err = info.value
    assert (err.side, err.state, err.move) == (side, state, move)
    assert side in str(err) and repr(state) in str(err) and repr(move) in str(err)
    assert not any(is_legal(side, state, move, t) for t in TABLES[side])


def test_every_state_reaches_end_and_end_is_final() -> None:
    for side in SIDES:
        for start in TABLES[side]:
            seen, frontier = {start}, [start]
            while frontier:
                for target in TABLES[side][frontier.pop()].values():
                    if target not in seen:
                        seen.add(target)
                        frontier.append(target)
            assert END in seen, f"{side} {start} cannot reach End"


def test_lifecycle_object_records_history_and_refuses_after_end() -> None:
    lc = Lifecycle("client")
    assert lc.state == "C" and not lc.ended
    for move in ("started", "cancel", "cancel_issued", "complete", "completed"):
        lc.move(move)
    assert lc.history == ["C", "WComp", "Can", "WComp", "Comp", "End"]
    assert lc.ended
    with pytest.raises(LifecycleError, match="no move leaves it"):
        lc.move("complete")
    assert lc.history[-1] == "End"  # a refused move changes nothing


def test_server_paths() -> None:
    for moves, history in [(("complete", "completed"), ["D", "Comp", "End"]),
                           (("abort", "aborted"), ["D", "A", "End"]),
                           (("fatal",), ["D", "End"])]:
        lc = Lifecycle("server")
        for m in moves:
            lc.move(m)
        assert lc.history == history
    lc = Lifecycle("server")
    lc.move("abort")
    for refused in ("complete", "abort", "fatal"):  # Complete after Abort, Abort twice: refused
        with pytest.raises(LifecycleError):
            lc.move(refused)


def test_move_to_end() -> None:
    assert move_to_end("server", "D") == "fatal"
    assert move_to_end("server", "A") == "aborted"
    assert move_to_end("client", "C") == "start_failed"
    assert move_to_end("client", "WComp") is None


def test_initial_entry_legality() -> None:
    assert is_legal("client", None, "call", "C")
    assert is_legal("server", None, "dispatch", "D")
    assert not is_legal("server", None, "dispatch", "Comp")
    for side, (a, b) in itertools.product(SIDES, [("x", "y")]):
        assert not is_legal(side, a, "move", b)


@pytest.mark.parametrize("side", SIDES)
def test_readme_diagrams_are_drawn_from_the_tables(side: str) -> None:
    from callstate.lifecycle import mermaid
    from tests.documentation import documentation
    readme = documentation()
    assert f"```mermaid\n{mermaid(side)}\n```" in readme, f"README's {side} diagram drifted from the table"
