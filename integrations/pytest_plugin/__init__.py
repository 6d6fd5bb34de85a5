"""callstate's pytest plugin, registered through the `pytest11` entry point: installing
callstate is enough, a test file needs no conftest.

Fixtures:
  callstate_server          a running emulator (session-scoped) on its own thread and event
                            loop, or the server of --callstate-target; `.target`, `.log_path`,
                            `.history(call_id)`, `.counters()`
  callstate_server_factory  `factory(mix=..., max_hold=..., ...)`: an emulator of its own for
                            one test; `.client()` / `.async_client()` give clients checked
                            like the fixtures' ones
  callstate_client          a sync `callstate.client.Client` connected to callstate_server
  callstate_async_client    an `AsyncClient` created on the test's own event loop (pytest-asyncio)
  callstate_calls           the calls the test made; checked at teardown
  callstate_standin         a stand-in of your own protos (marker or ini options name the protos
                            and rules): `.target`, `.schema`, `.history(call_id)`, `.calls(method=,
                            rule=)`; a plugin client's calls on it are checked like the others

Every call made through these clients is checked at the test's teardown with the rules of
`callstate check` (both sides: the client's entries as recorded, the server's from its
journal); a broken invariant fails the test with the violation and the call's two histories.

Nothing heavier than pytest is imported until a test asks for one of these fixtures, so the
plugin costs a test run that does not use it nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import pytest

if TYPE_CHECKING:
    from callstate.client import AsyncClient, Client
    from callstate.pytest_plugin.recorder import TestCalls
    from callstate.pytest_plugin.servers import ServerHandle, ThreadServer

__all__ = ["assert_lifecycle"]

_CALLS = pytest.StashKey["TestCalls"]()
_STANDIN_INI = {"callstate_protos": ".proto files the callstate_standin fixture serves (paths from the rootdir)",
                "callstate_proto_path": "import paths of those .proto files (protoc's -I)",
                "callstate_descriptor_set": "or: a FileDescriptorSet the callstate_standin fixture serves",
                "callstate_rules": "the rules file (YAML or JSON) of the callstate_standin fixture"}
SETTLE = 5.0   # how long the teardown check waits for the server to end a call the client has ended


def __getattr__(name: str) -> Any:
    # `from callstate.pytest_plugin import assert_lifecycle` without importing grpc at plugin load
    if name == "assert_lifecycle":
        from callstate.pytest_plugin.assertions import assert_lifecycle
        return assert_lifecycle
    raise AttributeError(name)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("callstate", "callstate (MS-RPC async call lifecycle emulator)")
    group.addoption("--callstate-target", metavar="HOST:PORT", default=None,
                    help="use the callstate server at HOST:PORT (e.g. one in containers) instead of starting one")
    group.addoption("--callstate-connect-timeout", metavar="SECONDS", type=_seconds, default=5.0,
                    help="how long to wait for --callstate-target to accept a connection (default: 5)")
    group.addoption("--callstate-log-dir", metavar="DIR", default=None,
                    help="keep both sides' state logs of every failed test in DIR/<test id>/")
    group.addoption("--callstate-token", metavar="TOKEN", default=None,
                    help="bearer token for --callstate-target (default: $CALLSTATE_TOKEN)")
    group.addoption("--callstate-tls-ca", metavar="PEM", default=None,
                    help="reach --callstate-target over TLS, trusting this CA")
    group.addoption("--callstate-tls-cert", metavar="PEM", default=None,
                    help="client certificate for a --callstate-target that wants one (with --callstate-tls-key)")
    group.addoption("--callstate-tls-key", metavar="PEM", default=None, help="the key of --callstate-tls-cert")
    for name, help_text in _STANDIN_INI.items():
        parser.addini(name, help_text, default="")


def _seconds(text: str) -> float:
    """A bound in seconds: a positive finite number (nan would wait forever, inf overflows)."""
    import argparse
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


_ACCESS = pytest.StashKey[Any]()   # the ChannelSettings of --callstate-target


def _target_access(config: pytest.Config) -> Any:
    """TLS and token for --callstate-target, read (PEM files too) before any test runs: a bad
    one is a usage error. None without a target or any of them: plaintext, no token."""
    opt = config.getoption
    if not opt("callstate_target"):
        return None
    import os

    from callstate.wire import TOKEN_ENV

    token = opt("callstate_token") or os.environ.get(TOKEN_ENV) or None
    tls = {k: opt(f"callstate_{k}") for k in ("tls_ca", "tls_cert", "tls_key")}
    if not (token or any(tls.values())):
        return None
    from callstate.client.channel import ChannelSettings

    if bool(tls["tls_cert"]) != bool(tls["tls_key"]):
        raise pytest.UsageError("callstate: --callstate-tls-cert and --callstate-tls-key go together")
    try:
        settings = ChannelSettings(token=token, **tls)
    except ValueError as exc:   # the token
        raise pytest.UsageError(f"callstate: {'--callstate-token' if opt('callstate_token') else TOKEN_ENV}: {exc}") from None
    try:
        settings.credentials()
    except (OSError, ValueError) as exc:
        raise pytest.UsageError(f"callstate: {exc}") from None
    return settings


def _log_dir_problem(config: pytest.Config) -> str:
    """Why --callstate-log-dir cannot take a failed test's logs ("" when it can: a folder, or one that
    can be made). A file there failed every test at its teardown with NotADirectoryError."""
    log_dir = config.getoption("callstate_log_dir")
    if not log_dir:
        return ""
    path = config.invocation_params.dir / log_dir
    there = next(p for p in (path, *path.parents) if p.exists())   # the folder, or where it would be made
    if not there.is_dir():
        return (f"callstate: --callstate-log-dir {log_dir}: {there} is a file, not a folder "
                f"(a failed test's logs go in DIR/<test id>/)")
    return ""


def pytest_configure(config: pytest.Config) -> None:
    if why := _log_dir_problem(config):
        raise pytest.UsageError(why)
    config.stash[_ACCESS] = _target_access(config)
    config.pluginmanager.register(_KeptLogs(), "callstate-kept-logs")
    config.addinivalue_line("markers", "callstate_standin(protos=[...], proto_path=[...], rules=FILE, "
                            "descriptor_set=FILE, mix=..., max_hold=...): configure the callstate_standin fixture")


_TIMEOUT_AT = pytest.StashKey[float]()   # when pytest-timeout cuts the test off (setup to teardown)


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> None:
    """pytest-timeout times this test, its teardown too: the teardown's check must leave itself
    time to say what it found before that timer cuts it off with a stack dump."""
    import time

    if not settings.func_only:
        item.stash[_TIMEOUT_AT] = time.monotonic() + settings.timeout


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    report = yield
    calls = item.stash.get(_CALLS, None)
    if calls is not None and report.when == "call" and report.failed:
        calls.test_failed = True   # its logs are kept under --callstate-log-dir
    if calls is not None and report.when == "teardown" and calls.kept is not None:
        report.callstate_kept = str(calls.kept)   # travels with the report (pytest-xdist: to the controller)
    return report


class _KeptLogs:
    """Which folder holds which failed test's logs, gathered from the test reports: under
    pytest-xdist the workers run the tests, and only their reports reach the summary."""

    def __init__(self) -> None:
        self.kept: list[tuple[str, str]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        folder = getattr(report, "callstate_kept", None)
        if folder and report.when == "teardown":
            self.kept.append((report.nodeid, folder))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """(A parametrized id is made a folder name with a digest, so the id alone does not say.)"""
        if self.kept:
            terminalreporter.section("callstate: both sides' logs kept")
            for nodeid, folder in self.kept:
                terminalreporter.write_line(f"{folder}  {nodeid}")


def _fail(message: str) -> None:
    __tracebackhide__ = True
    try:
        pytest.fail(f"callstate: {message}", pytrace=False)
    except pytest.fail.Exception as failed:   # one line: not also the error it says, as its context
        raise failed from None


@pytest.fixture(scope="session")
def callstate_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator["ServerHandle"]:
    """The session's callstate server: an emulator on a free port, on its own thread and
    event loop (or the one --callstate-target names)."""
    from callstate.pytest_plugin.assertions import register_server, unregister_server
    from callstate.pytest_plugin.servers import RemoteServer, ServerHandle, ServerUnavailable

    target = request.config.getoption("callstate_target")
    handle: ServerHandle
    try:
        if target:
            handle = RemoteServer(target, request.config.stash[_ACCESS]).connect(
                request.config.getoption("callstate_connect_timeout"))
        else:
            handle = _start_emulator(tmp_path_factory.mktemp("callstate") / "server.jsonl")
    except ServerUnavailable as exc:
        _fail(str(exc))
    register_server(handle)
    try:
        yield handle
    finally:
        unregister_server(handle)
        handle.stop()  # type: ignore[attr-defined]


def _start_emulator(log: Path, **config: Any) -> "ThreadServer":
    from callstate.server.app import ServerOptions
    from callstate.pytest_plugin.servers import ServerUnavailable, ThreadServer, emulator_config

    journal_size = config.pop("journal_size", 10_000)
    try:
        emulator = emulator_config(config, also=("journal_size",))
    except (TypeError, ValueError) as exc:
        raise ServerUnavailable(f"bad emulator configuration: {exc}") from None
    options = ServerOptions(bind="127.0.0.1", port=0, log=log, journal_size=journal_size, emulator=emulator)
    return ThreadServer(options).start()


@pytest.fixture
def callstate_calls(request: pytest.FixtureRequest) -> Iterator["TestCalls"]:
    """Every call the test makes through the plugin's clients; checked at its teardown."""
    from callstate.pytest_plugin.recorder import TestCalls

    log_dir = request.config.getoption("callstate_log_dir")
    # from where pytest was started, not from wherever the test has moved the working directory to
    where = request.config.invocation_params.dir / log_dir if log_dir else None
    calls = TestCalls(request.node.nodeid, where, SETTLE)
    calls.timeout_at = request.node.stash.get(_TIMEOUT_AT, None)
    request.node.stash[_CALLS] = calls
    yield calls
    failure = calls.check()
    if failure:
        _fail(failure)


@pytest.fixture
def callstate_client(callstate_server: "ServerHandle", callstate_calls: "TestCalls") -> Iterator["Client"]:
    """A sync client of callstate_server, closed at teardown."""
    from callstate.client import Client

    client = Client(callstate_server.target, log=callstate_calls.recorder(callstate_server),
                    settings=callstate_server.settings)
    yield client
    client.close()


@pytest.fixture
def callstate_async_client(request: pytest.FixtureRequest, callstate_server: "ServerHandle",
                           callstate_calls: "TestCalls") -> Iterator["AsyncClient"]:
    """An asyncio client of callstate_server, made on the test's own event loop (whatever its
    loop scope) and closed on it at teardown."""
    from callstate.client import AsyncClient

    runner = _test_loop_runner(request)
    log = callstate_calls.recorder(callstate_server)

    async def make() -> AsyncClient:   # the channel belongs to the loop it is made on
        return AsyncClient(callstate_server.target, log=log, settings=callstate_server.settings)

    client = runner.run(make())
    yield client
    if not client.closed:
        runner.run(client.close())


def _test_loop_runner(request: pytest.FixtureRequest) -> Any:
    """pytest-asyncio's runner of the loop the requesting test runs on. Requesting it from
    here sets it up before this fixture and tears it down after, so the client can be closed
    on its own loop."""
    marker = request.node.get_closest_marker("asyncio")
    if marker is None and request.node.get_closest_marker("anyio") is not None:
        _fail("callstate_async_client is made on pytest-asyncio's loop, and this test runs on anyio's: mark it "
              "@pytest.mark.asyncio instead, or make the client in the test, on its own loop: "
              "callstate_server_factory().async_client()")
    if marker is None:
        _fail("callstate_async_client is for asyncio tests run by pytest-asyncio (mark the test "
              "@pytest.mark.asyncio, or set asyncio_mode = auto); a sync test uses callstate_client")
    scope = marker.kwargs.get("loop_scope") or marker.kwargs.get("scope")
    if scope is None:
        try:
            scope = request.config.getini("asyncio_default_test_loop_scope") or "function"
        except ValueError:
            scope = "function"
    try:
        return request.getfixturevalue(f"_{scope}_scoped_runner")
    except pytest.FixtureLookupError:
        _fail(f"callstate_async_client needs pytest-asyncio >= 1.0 (no event loop runner for loop scope {scope!r})")


@pytest.fixture
def callstate_server_factory(tmp_path: Path, callstate_calls: "TestCalls") -> Iterator[Callable[..., "ServerHandle"]]:
    """`factory(mix="complete=80,abort=20", max_hold=5.0, abort_code=..., max_in_flight=...,
    seed=..., journal_size=...)`: an emulator of the test's own, stopped at its teardown
    (after its calls are checked)."""
    from callstate.pytest_plugin.assertions import register_server, unregister_server
    from callstate.pytest_plugin.servers import ServerUnavailable

    servers: list[Any] = []

    def factory(**config: Any) -> "ServerHandle":
        __tracebackhide__ = True
        try:
            srv = _start_emulator(tmp_path / f"server-{len(servers) + 1}.jsonl", **config)
        except ServerUnavailable as exc:
            _fail(str(exc))
        _bind_clients(srv, callstate_calls)
        servers.append(srv)
        register_server(srv)
        return srv

    yield factory
    try:
        callstate_calls.check()   # while its servers still answer; a failure is raised by callstate_calls
    finally:
        for srv in servers:
            unregister_server(srv)
            srv.stop()


def _bind_clients(srv: Any, calls: "TestCalls") -> None:
    """Give a factory server `.client()` and `.async_client()`: clients whose calls the test's
    teardown checks, closed then if the test did not close them."""
    from callstate.client import AsyncClient, Client

    def no_log(kwargs: dict[str, Any], what: str) -> None:
        if "log" in kwargs:   # it would replace the recorder the teardown checks the calls from
            raise TypeError(f"{what}() takes no log=: its calls are recorded for the test's teardown, which "
                            "checks them; a failed test's logs (both sides) are kept under --callstate-log-dir")

    def client(**kwargs: Any) -> Client:
        __tracebackhide__ = True
        no_log(kwargs, ".client")
        c = Client(srv.target, log=calls.recorder(srv), **kwargs)
        calls.closers.append(c.close)
        return c

    def async_client(**kwargs: Any) -> AsyncClient:
        import asyncio

        __tracebackhide__ = True
        no_log(kwargs, ".async_client")
        try:   # before the client: one made off its loop would be left open
            loop = asyncio.get_running_loop()
        except RuntimeError:
            _fail(".async_client() belongs to the event loop that uses it: make it in an async test or in a "
                  "coroutine (asyncio.run); a sync test uses .client()")
        c = AsyncClient(srv.target, log=calls.recorder(srv), **kwargs)

        def close() -> None:
            if c.closed:
                return
            if not loop.is_closed() and not loop.is_running():
                loop.run_until_complete(c.close())
            else:   # its loop is gone: end its calls on the client's side at least, each
                c.closed = True   # recording that the close cut it off (its 1722 is explained)
                c._note_closing()
                c._end_live_calls()
                c._close_log()

        calls.closers.append(close)
        return c

    srv.client, srv.async_client = client, async_client


@pytest.fixture
def callstate_standin(request: pytest.FixtureRequest, tmp_path: Path,
                      callstate_calls: "TestCalls") -> Iterator[Any]:
    """A stand-in of your own services for this test: every method answered with the server
    lifecycle, scripted by the `callstate-script` header or the rules file; stopped at teardown
    after its calls are checked."""
    from callstate.pytest_plugin.assertions import register_server, unregister_server
    from callstate.pytest_plugin.servers import ServerUnavailable
    from callstate.pytest_plugin.standin import MARKER, settings, start_standin

    marker = request.node.get_closest_marker(MARKER)
    try:
        conf = settings(dict(marker.kwargs) if marker else {}, request.config.getini, request.config.rootpath)
        srv = start_standin(tmp_path / "standin.jsonl", **conf)
    except ServerUnavailable as exc:
        _fail(str(exc))
    _bind_clients(srv, callstate_calls)
    register_server(srv)
    try:
        yield srv
        callstate_calls.check()
    finally:
        unregister_server(srv)
        srv.stop()
