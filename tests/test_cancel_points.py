"""One cancel-point grammar: every point of both tables parses from how usage writes it, and the
unary and pipe points refuse bad text with the same kinds of message."""

from __future__ import annotations

import pytest

from callstate.cancel_points import PIPE, UNARY, PointTable
from callstate.pipe_script import PIPE_CANCEL_POINTS, PipeCancelPoint
from callstate.scenario import POINT_KINDS, CancelPoint

pytestmark = pytest.mark.unit


def example(table: PointTable, name: str) -> str:
    return f"{name}:2" if table.takes_arg(name) else name


@pytest.mark.parametrize("table, point_class", [(UNARY, CancelPoint), (PIPE, PipeCancelPoint)], ids=["unary", "pipe"])
def test_every_point_of_a_table_parses_and_prints_back(table: PointTable, point_class: type) -> None:
    for name in table.names():
        text = example(table, name)
        assert str(point_class.parse(text)) == text


def test_the_scripts_use_the_tables() -> None:
    assert POINT_KINDS == UNARY.names() and PIPE_CANCEL_POINTS == PIPE.names()


@pytest.mark.parametrize("text, message", [
    ("sometime", "cancel point 'sometime': expected one of before-start, after-start, after:SECONDS, "
                 "random:SECONDS, held:SECONDS"),
    ("after", "cancel point 'after': after needs :SECONDS"),
    ("after-start:1", "cancel point 'after-start:1': after-start takes no :SECONDS"),
    ("held:soon", "'soon' is not a number of seconds"),
    ("random:4000", "seconds must be in 0..3600"),
])
def test_a_bad_unary_point_is_named(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        CancelPoint.parse(text)


@pytest.mark.parametrize("text, message", [
    ("later", "pipe cancel point 'later': expected one of before-start, after-headers, after-sent:N, "
              "after-received:N, after-half-close"),
    ("after-sent", "after-sent needs :N"),
    ("after-headers:1", "after-headers takes no :N"),
    ("after-received:x", "'x' is not a number of messages"),
    ("after-sent:0", "N must be >= 1"),
])
def test_a_bad_pipe_point_is_named(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PipeCancelPoint.parse(text)


def test_the_listing_and_the_docs_table_hold_every_point() -> None:
    for table in (UNARY, PIPE):
        for point in table.points:
            assert f"`{point}` | {point.meaning} |" in table.markdown()
            assert f"{point}" in table.listing() and point.meaning in table.listing()
