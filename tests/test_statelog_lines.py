"""The state log's line formatter: what it keeps from one line to the next (each shape of the
fields after the call id, the last call id and side's JSON text) never leaks into a line it does
not fit, and each line is `to_dict`'s JSON byte for byte; and `StateLog.append`, the queue's own
append while the log is on, takes nothing once it is off."""

from __future__ import annotations

import io
import time

import orjson

from callstate import statelog
from callstate.lifecycle import CLIENT, SERVER
from callstate.logfile import BATCH, StateLog
from callstate.statelog import Entry, format_line, format_ts, to_dict

# One entry, then the same with one field from state to cancel changed: each of these fields is
# part of the shape a line is formatted from, so a shape cached for one must not serve the next.
BASE = Entry(1765000000.25, CLIENT, "0f3a9c" * 5, "End", "Comp", "enter", "completed", 1818, "CANCELLED",
             "cancelled by the caller", "abortive")
VARIANTS = [BASE._replace(**{field: value}) for field, value in [
    ("state", "Comp"), ("prev", "WComp"), ("prev", None), ("event", "cancel_sent"), ("move", "aborted"),
    ("move", None), ("code", 1726), ("code", None), ("grpc_status", "UNAVAILABLE"), ("grpc_status", None),
    ("detail", "another"), ("detail", None), ("detail", 'with "quotes"'), ("cancel", "non-abortive"),
    ("cancel", None)]]


def test_each_field_of_a_shape_shows_in_its_line() -> None:
    for e in [BASE, *VARIANTS, BASE, *reversed(VARIANTS)]:   # every shape met twice: the second from the cache
        assert orjson.loads(format_line(e)) == to_dict(e)


def test_the_fields_after_the_shape_are_each_lines_own() -> None:
    # sent/received and delay_ms differ line by line (not in the shape); method and rule are in it
    for e in [BASE._replace(sent=3, received=2), BASE, BASE._replace(sent=4, received=3), BASE._replace(delay_ms=1.5),
              BASE._replace(delay_ms=2.5), BASE._replace(method="a.B/C"), BASE._replace(method="a.B/D"),
              BASE._replace(rule='rules[0] "x"'), BASE._replace(rule="rules[1]"), BASE._replace(side=SERVER), BASE,
              BASE._replace(sent=3, received=2, method="a.B/C", rule="r"), BASE._replace(sent=5, received=2, rule="r")]:
        assert orjson.loads(format_line(e)) == to_dict(e)


def _server_call_entries() -> list[Entry]:
    """A server's common call as it logs it: D, Comp and End (the formatter's hot path)."""
    from callstate.server.calls import ServerCall
    from callstate.server.journal import Journal
    entries: list[Entry] = []
    ServerCall("0f3a9c" * 5, Journal(), entries.append).complete_now("OK")
    return entries


def test_each_line_is_to_dict_s_json_byte_for_byte() -> None:
    shapes = [*_server_call_entries(), BASE, *VARIANTS, BASE._replace(sent=3, received=2), BASE._replace(delay_ms=183.25),
              BASE._replace(method="a.B/C", rule='rules[0] "x"'), BASE._replace(side=SERVER),
              BASE._replace(call_id='said "hi"\n'), BASE._replace(call_id="caf\u00e9"), BASE._replace(t=1765000001.0000004)]
    for e in [*shapes, *shapes]:   # each met twice: the second from the caches
        assert format_line(e) == orjson.dumps(to_dict(e)).decode() + "\n"


def test_a_call_id_is_written_as_its_own_line_says() -> None:
    plain, quoted = "0f3a9c" * 5, 'said "hi"\n'
    entries = [BASE._replace(call_id=cid) for cid in (plain, plain, quoted, quoted, plain, "caf\u00e9", plain)]
    for e in entries:
        assert orjson.loads(format_line(e))["call_id"] == e.call_id


def test_a_field_that_cannot_be_a_key_is_formatted_all_the_same() -> None:
    e = BASE._replace(detail=["not", "text"])   # not what callstate logs, but no line may be lost to it
    assert orjson.loads(format_line(e)) == to_dict(e)


def test_the_shapes_kept_are_bounded() -> None:
    # details that differ call by call (a user's abort text): the cache is cleared, never grown past its bound
    for i in range(statelog._MAX_TAILS + 10):
        e = BASE._replace(detail=f"abort {i}")
        assert format_line(e).endswith(f',"detail":"abort {i}","cancel":"abortive"}}\n')
    assert 0 < len(statelog._TAILS) <= statelog._MAX_TAILS


def test_times_are_written_to_the_microsecond_they_were_in() -> None:
    for t in (1765000000.0, 1765000000.000001, 1765000000.5, 1765000000.9999999, 1765000001.0000004, 0.25):
        sec = int(t)
        want = "%s%06dZ" % (time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec)), (t - sec) * 1_000_000)
        assert format_ts(t) == want
        assert orjson.loads(format_line(BASE._replace(t=t)))["ts"] == want


def test_the_appending_thread_makes_the_lines_a_run_at_a_time_and_takes_nothing_after_close() -> None:
    out = io.BytesIO()
    log = StateLog(out, flush_interval=60)   # the writer thread does not wake by itself
    for _ in range(BATCH - 1):
        log.append(BASE)
    assert not log._lines and len(log._entries) == BATCH - 1   # less than a run: waiting
    log.append(BASE)
    # the run's lines are made at once, on the appending thread, before any flush: the writer
    # thread only joins and writes them, so it never takes turns at the GIL with the event loop
    # to format them
    assert list(log._lines) == [[format_line(BASE)] * BATCH] and not log._entries
    log.append(BASE)   # the next run begins
    log.close()
    assert [orjson.loads(line) for line in out.getvalue().splitlines()] == [to_dict(BASE)] * (BATCH + 1)
    log.append(BASE)   # a call ended after its client's log closed: nothing queued where no writer takes it
    assert not log._entries and not log._lines


def test_a_lone_surrogate_in_a_caller_s_text_is_logged_as_its_escape_and_read_back() -> None:
    # a caller's own str may hold one (UTF-8 cannot): its line is still made, on the caller's
    # thread, and stays a valid line; the entries around it are not lost
    out = io.BytesIO()
    log = StateLog(out, flush_interval=60)
    odd = BASE._replace(call_id="id\ud800", detail="text \udcff", rule="rule \ud800")
    log.append(BASE)
    log.append(odd)
    log.append(BASE)
    log.close()
    got = [entry for _, entry in statelog.parse_log(out.getvalue().splitlines(), "log")]
    assert [e["call_id"] for e in got] == [BASE.call_id, "id\\ud800", BASE.call_id]
    assert (got[1]["detail"], got[1]["rule"]) == ("text \\udcff", "rule \\ud800")


def test_after_a_write_error_append_takes_nothing() -> None:
    class Failing(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data) -> int:  # type: ignore[no-untyped-def, override]
            raise OSError(28, "No space left on device")
    log = StateLog(Failing(), flush_interval=60)
    log.append(BASE)
    log.flush()
    assert not log.enabled
    for _ in range(1000):
        log.append(BASE)   # the client goes on; nothing may pile up in memory
    assert not log._entries and not log._lines
    log.close()


def test_a_traced_client_s_log_takes_nothing_after_it_closed() -> None:
    from callstate.observe import ObservedLog
    seen: list[Entry] = []
    log = StateLog(io.BytesIO(), flush_interval=60)
    observed = ObservedLog(log, [seen.append])   # a client with tracing=: its entries go to both
    observed.append(BASE)
    observed.close()
    observed.append(BASE)   # after close: nothing kept for a writer that is gone
    assert not log._entries and not log._lines and len(seen) == 2
