"""callstate on Locust: `CallstateUser` drives scripted calls (the scenario options of
`callstate load`) from Locust's distributed engine, one statistics entry per final code.

    # locustfile.py
    from callstate.locust import CallstateUser      # configured by --callstate-* options

    locust -f locustfile.py --host 127.0.0.1:50051 --headless -u 50 -r 50 -t 30s
    locust -f locustfile.py --host 127.0.0.1:50051 --headless -t 30s --callstate-method shop.v1.Shop/Charge \
           --callstate-data '{"order_id": "o-1"}'       # a method of your own service (method.py)

Locust runs users as gevent greenlets; grpc must be switched to gevent before any channel
exists, so importing this module does it (`grpc.experimental.gevent.init_gevent()`, as
Locust's gRPC recipe does). Import it before anything that makes a gRPC channel.
"""

from __future__ import annotations

import locust  # noqa: F401  (monkey-patches the standard library for gevent first)

import grpc.experimental.gevent as _grpc_gevent

_grpc_gevent.init_gevent()

from callstate.locust import flush  # noqa: E402,F401  (the master waits for the workers' last samples)
from callstate.locust import final_csv  # noqa: E402
from callstate.locust import hub  # noqa: E402
from callstate.locust.options import add_arguments  # noqa: E402
from callstate.locust.user import CallstateUser, expected_codes  # noqa: E402

__all__ = ["CallstateUser", "add_arguments", "expected_codes"]

final_csv.install()   # --csv files end with every call, the ones ended at quit included
hub.install()         # a worker told to spawn reads Locust's defaults once, not once per option

# gevent timers count from the hub's cached clock, which stood still while the imports above
# ran (seconds on a busy machine): refresh it, or Locust's --run-time timer fires that much early.
import gevent as _gevent  # noqa: E402

_gevent.get_hub().loop.update_now()
