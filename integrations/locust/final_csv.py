"""Locust's `--csv` files end with every call of the run, the last second's included.

Locust rewrites its CSV statistics once a second and closes the files at quit without a last
write, so the calls that ended after the last tick (those the stop cut off and callstate ends
at quit, and any finished in that second) are in `--json-file`, the printed summary and the
state logs, but not in `_stats.csv`. The writer here writes its files once more when Locust
quits, once the run is stopped: `_stats.csv`, `_failures.csv` and `_exceptions.csv` are
rewritten whole (as every tick does) and `_stats_history.csv` gets one more row set. Not at
close: by then `--json-file` has taken the entries' figures (Locust's JSON report empties
each entry as it reads it), and only the Aggregated row would be left.
"""

from __future__ import annotations

import time
from typing import IO, Any, Callable

from locust import stats


class FinalCSVWriter(stats.StatsCSVFileWriter):
    """Locust's CSV writer, which writes the final statistics when Locust quits."""

    def __init__(self, environment: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(environment, *args, **kwargs)
        environment.events.quitting.add_listener(self._on_quitting)

    def _on_quitting(self, environment: Any, **_: Any) -> None:
        # on SIGTERM or Ctrl-C Locust says it quits before it stops the run: stop it first (a
        # no-op when stopped), so the calls ended at the stop are counted (and on a master, the
        # workers' last reports are in: flush.py)
        if environment.runner is not None:
            environment.runner.stop()
        self.write_final()

    def write_final(self) -> None:
        for handle, writer, write in ((self.requests_csv_filehandle, self.requests_csv_writer, self.requests_csv),
                                      (self.failures_csv_filehandle, self.failures_csv_writer, self.failures_csv),
                                      (self.exceptions_csv_filehandle, self.exceptions_csv_writer,
                                       self.exceptions_csv)):
            _rewrite(handle, writer, write)
        history = self.stats_history_csv_filehandle
        if history.tell() == 0:   # the periodic writer never ran: its header first
            self.stats_history_csv_writer.writerow(self.stats_history_csv_columns)
        self._stats_history_data_rows(self.stats_history_csv_writer, time.time())
        history.flush()


def _rewrite(handle: IO[str], writer: Any, write: Callable[[Any], None]) -> None:
    """A file of current figures, header and rows, written over from its start."""
    handle.seek(0)
    handle.truncate()
    write(writer)
    handle.flush()


def install() -> None:
    """Locust's main() makes its CSV writer as `locust.stats.StatsCSVFileWriter`, after the
    locustfile (which imports callstate.locust) is loaded: this class takes its place."""
    if stats.StatsCSVFileWriter is not FinalCSVWriter:
        stats.StatsCSVFileWriter = FinalCSVWriter   # type: ignore[misc]
