"""A stand-in for any gRPC service: every method of a user's schema, answered by the emulator.

Each method is served by a generic handler with the user's message classes; before the
dispatch it decides the call's `Answer`: the script (a `callstate-script` header first, else
the first matching rule's), the reply (the rule's, else the response type's smallest message),
the rule's mix, the call id and cancel key from metadata. Then the call runs the very
lifecycle of `Emulator/Call` (unary) or of a pipe (server-, client- and bidi-streaming map
onto the out, in and both pipes): D -> Comp / A -> End / fatal, on_cancel, max hold, cancel
notices by call id through `Emulator/Cancel`, the journal and the state log.

A bad header is refused before dispatch (INVALID_ARGUMENT, 87 in the code trailer, naming the
field), as the emulator refuses a bad call id: such a call is never logged.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from pathlib import Path
from typing import IO, Any, AsyncIterator, Callable

import grpc
from google.protobuf.message import DecodeError, Message

from callstate.lifecycle import PIPE_BOTH, PIPE_IN, PIPE_OUT, UNARY
from callstate.pipe_script import validate_pipe
from callstate.files import load_rules
from callstate.rules import RuleSet, RulesError, describe
from callstate.schema import Method, Schema
from callstate.schema.model import SHAPE_NAMES, did_you_mean, listed
from callstate.script import ScriptError, validate
from callstate.script_header import decode as decode_script
from callstate.server.answer import Answer, BadPush
from callstate.server.dispatch import Refusal, refuse
from callstate.server.emulator import EmulatorServicer
from callstate.wire import CALL_ID_KEY, CANCEL_KEY_KEY, OWN_SERVICE_PREFIXES

RULES_POLL = 0.5   # seconds between looks at the rules file (a change lands within two)


def served_methods(schema: Schema) -> list[Method]:
    return [m for m in schema.methods.values() if not m.service.startswith(OWN_SERVICE_PREFIXES)]


def smallest(cls: type[Message]) -> Message:
    """The response a rule does not give: the empty message, with proto2's required fields (and
    theirs, in turn) at their defaults, since a message missing one cannot be sent at all."""
    msg = cls()
    _fill_required(msg, depth=0)
    return msg


def _fill_required(msg: Message, depth: int) -> None:
    if depth > 32:   # a required field of its own type has no finite message: leave it for a rule's reply
        return
    for field in msg.DESCRIPTOR.fields:
        if not field.is_required:
            continue
        if field.message_type is not None:
            sub = getattr(msg, field.name)
            sub.SetInParent()
            _fill_required(sub, depth + 1)
        else:
            setattr(msg, field.name, field.default_value)


class Standin:
    """The user's services on an emulator: handlers, the per-call answer, the rules in force."""

    def __init__(self, schema: Schema, emulator: EmulatorServicer, rules: RuleSet | None = None) -> None:
        self.schema, self.emulator = schema, emulator
        self.rules = rules or RuleSet.empty()
        self.methods = served_methods(schema)
        self._empty = {m.name: smallest(m.response) for m in self.methods}

    @property
    def service_names(self) -> list[str]:
        return sorted({m.service for m in self.methods})

    def describe_methods(self) -> str:
        """How many methods, and how many of them are streamed as pipes, of which shape (the
        serve command's start line): "8 methods, 3 streamed as pipes: 1 server-streaming, ..."."""
        text = f"{len(self.methods)} method{'' if len(self.methods) == 1 else 's'}"
        streamed = Counter(m.kind for m in self.methods if m.kind != UNARY)
        if streamed:
            shapes = ", ".join(f"{streamed[kind]} {SHAPE_NAMES[kind]}" for kind in (PIPE_OUT, PIPE_IN, PIPE_BOTH)
                               if streamed[kind])
            text += f", {sum(streamed.values())} streamed as pipes: {shapes}"
        return text

    def register(self, server: grpc.aio.Server) -> None:
        by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        for m in self.methods:
            by_service.setdefault(m.service, {})[m.descriptor.name] = self._handler(m)
        for service, handlers in by_service.items():
            # generic handlers only: registering these methods too (add_registered_method_handlers)
            # measured 0.7-0.9x Emulator/Call's calls/s, without 1.3-2.1x (benchmarks/run.py standin)
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        server.add_generic_rpc_handlers((UnknownMethods(by_service),))   # after them: only what they lack

    def answer(self, method: Method, request: Message | None, metadata: dict[str, Any]) -> Answer | Refusal:
        """The call's answer, or why it is refused before its dispatch."""
        try:
            script = decode_script(metadata, method.kind)
            if script is not None:
                if method.kind == UNARY:
                    validate(script, self.emulator.config.limits)   # type: ignore[arg-type]
                else:
                    validate_pipe(script, method.kind, self.emulator.config.limits)   # type: ignore[arg-type]
        except ScriptError as exc:
            return grpc.StatusCode.INVALID_ARGUMENT, f"{method.name}: bad script header: {exc}"
        rule = self.rules.first_match(method.name, metadata, request)
        if rule is None:
            got = Answer(_text(metadata.get(CALL_ID_KEY)), _text(metadata.get(CANCEL_KEY_KEY)), script,
                         self._empty[method.name], method.name)
        else:
            got = Answer(_text(metadata.get(CALL_ID_KEY)), _text(metadata.get(CANCEL_KEY_KEY)),
                         script if script is not None else rule.script,
                         rule.reply if rule.reply is not None else self._empty[method.name], method.name, rule.label,
                         rule.mix)
        if request is not None:   # a unary or server-streaming call's one request: bounded as each push is
            limit = self.emulator.config.limits.max_payload_bytes
            if (size := request.ByteSize()) > limit:
                got.oversize = f"request: {size} bytes, over the server's payload limit ({limit} bytes)"
        return got

    def _handler(self, m: Method) -> grpc.RpcMethodHandler:
        """The method's handler. Requests arrive as bytes and are decoded here: grpc's own decode
        failure answers UNKNOWN ("Unexpected <class DecodeError>") and, in a request stream,
        looks like a cancel to the handler while the caller waits out its deadline."""
        emulator, answer = self.emulator, self.answer
        pipes = emulator.pipes
        encode = m.response.SerializeToString

        async def answered(request: Message | None, context: grpc.aio.ServicerContext) -> Answer:
            """The call's answer (refused before its dispatch when there is none)."""
            got = answer(m, request, dict(context.invocation_metadata() or ()))
            if not isinstance(got, Answer):
                await refuse(context, got)
            return got

        async def one_request(data: bytes, context: grpc.aio.ServicerContext) -> Message:
            """A unary or server-streaming call's request (refused before its dispatch when it does not decode)."""
            request = decoded(m, data)
            if not isinstance(request, Message):
                await refuse(context, request)
            return request

        async def unary(data: bytes, context: grpc.aio.ServicerContext) -> Message:
            request = await one_request(data, context)
            return await emulator.Call(request, context, await answered(request, context))

        async def server_stream(data: bytes, context: grpc.aio.ServicerContext) -> None:
            request = await one_request(data, context)
            await pipes.serve(PIPE_OUT, None, None, context, await answered(request, context))

        async def client_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            got = await answered(None, context)
            return await pipes.serve(m.kind, None, decoded_stream(m, requests), context, got)

        if m.kind == UNARY:
            return grpc.unary_unary_rpc_method_handler(unary, None, encode)
        if m.kind == PIPE_OUT:
            return grpc.unary_stream_rpc_method_handler(server_stream, None, encode)
        if m.kind == PIPE_IN:
            return grpc.stream_unary_rpc_method_handler(client_stream, None, encode)
        assert m.kind == PIPE_BOTH
        return grpc.stream_stream_rpc_method_handler(client_stream, None, encode)


def not_its_request(m: Method, exc: DecodeError, what: str = "the request") -> str:
    return (f"{m.name}: {what} is not a {m.request.DESCRIPTOR.full_name} (is the caller's .proto the one served?): "
            f"{' '.join(str(exc).split()) or 'undecodable'}")


def decoded(m: Method, data: bytes) -> Message | Refusal:
    """The request of a unary or server-streaming call, or why it is refused before dispatch (87)."""
    try:
        return m.request.FromString(data)
    except DecodeError as exc:
        return grpc.StatusCode.INVALID_ARGUMENT, not_its_request(m, exc)


async def decoded_stream(m: Method, requests: AsyncIterator[bytes]) -> AsyncIterator[Message]:
    """A request stream's messages; one that does not decode ends the stream with BadPush."""
    pushed = 0
    async for data in requests:
        pushed += 1
        try:
            msg = m.request.FromString(data)
        except DecodeError as exc:
            raise BadPush(not_its_request(m, exc, f"push {pushed}")) from None
        yield msg


class UnknownMethods(grpc.GenericRpcHandler):
    """A method a served service lacks (the caller's .proto is newer, or misspelt): UNIMPLEMENTED
    naming it and the methods the service has, where gRPC would say only "Method not found!"."""

    def __init__(self, by_service: dict[str, Any]) -> None:
        self.methods = {service: sorted(handlers) for service, handlers in by_service.items()}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        service, _, method = str(details.method).lstrip("/").rpartition("/")   # type: ignore[attr-defined]
        known = self.methods.get(service)
        if known is None:
            return None
        message = (f"{service}/{method}: the stand-in's {service} has no method {method!r}"
                   f"{did_you_mean(method, known)}; its methods: {listed(known)}")

        async def unknown(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

        return grpc.stream_stream_rpc_method_handler(unknown)


class RulesFile:
    """A rules file in force: reloaded when it changes; a bad edit keeps the last good rules
    and says why on `err`. A running server never dies of it."""

    def __init__(self, path: str | Path, standin: Standin, err: IO[str] = sys.stderr,
                 on_reload: Callable[[RuleSet], None] | None = None) -> None:
        self.path, self.standin, self.err, self.on_reload = Path(path), standin, err, on_reload
        self._seen = _stamp(self.path)
        self._settling = self._seen   # a new stamp, seen once: reloaded when the next look sees it again
        self.reloads = self.failures = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(RULES_POLL)
            self.check()

    def check(self) -> bool:
        """Reload when the file changed and then held still for one look (an editor that
        truncates and rewrites is not caught half-way); True when new rules are in force."""
        stamp = _stamp(self.path)
        if stamp == self._seen:
            return False
        if stamp != self._settling:
            self._settling = stamp
            return False
        self._seen = stamp
        try:
            rules = load_rules(self.path, self.standin.schema, self.standin.emulator.config.limits)
        except RulesError as exc:
            self.failures += 1
            print(f"callstate serve: --rules {self.path} not reloaded, the last good rules stay: {exc}",
                  file=self.err, flush=True)
            return False
        self.standin.rules = rules
        self.reloads += 1
        print(f"callstate serve: --rules {self.path} reloaded ({describe(rules)})", file=self.err, flush=True)
        if self.on_reload is not None:
            self.on_reload(rules)
        return True


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else ""
