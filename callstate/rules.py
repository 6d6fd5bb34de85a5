"""A stand-in's rules file: which script, reply and mix answer each call of a user's method.

    rules:
      - method: payments.v1.Payments/Charge   # full name; * matches any part
        match:                                 # all must hold; none = every call
          request: {currency: "EUR"}           # a subset of the request's JSON form
          metadata: {x-tenant: "acme"}
        script: {outcome: abort, abort_code: 4321}
        reply: {status: "DECLINED"}            # the response, for complete
        mix: {complete: 80, abort: 15, fatal: 5}

Pure: text and a `Schema` in, compiled rules out (`callstate.files.load_rules` reads the
file); every check runs when the file is loaded, so a running server never meets a rule it
cannot apply. Errors are one line naming the file, the rule's line and the field (`RulesError`).
YAML needs PyYAML (`callstate[standin]`); a file that parses as JSON loads without it.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from callstate.lifecycle import PIPE_BOTH, PIPE_IN, PIPE_OUT, UNARY
from callstate.pipe_script import validate_pipe
from callstate.schema.model import (SHAPE_NAMES, WELL_KNOWN, Method, Schema, SchemaError, did_you_mean, listed,
                                    message_from_json, normalise_method_name, is_well_known)
from callstate.script import HOLD, OUTCOMES, Limits, Mix, MixError, ScriptError, validate
from callstate.script_header import from_fields
from callstate.wire import OWN_SERVICE_PREFIXES

ANY = f"{WELL_KNOWN}Any"   # a request or a field that packs another message

RULE_KEYS = ("name", "method", "match", "script", "reply", "mix")
MATCH_KEYS = ("request", "metadata")


class RulesError(ValueError):
    """A rules file that cannot be used: one line naming the file, line and field at fault."""


def method_pattern(pattern: str) -> re.Pattern[str]:
    """A method name with `*` wildcards ("shop.v1.*/Charge", "*") as a full-match regex. Each part
    between two wildcards is taken at its first place, atomically: a wildcard per character made
    `.*.*.*...` backtrack exponentially (14 of them: 10 s on one name, the event loop blocked)."""
    parts = pattern.strip().lstrip("/").split("*")
    if len(parts) == 1:
        return re.compile(re.escape(parts[0]))
    first, *middle, last = parts
    return re.compile(re.escape(first) + "".join(f"(?>.*?{re.escape(part)})" for part in middle) + ".*"
                      + re.escape(last))


def method_filter(pattern: str) -> re.Pattern[str]:
    """`method_pattern` of a name as users write it: without a `*`, grpcurl's "pkg.Svc.Method" too."""
    return method_pattern(pattern if "*" in pattern else normalise_method_name(pattern))


@dataclass(frozen=True)
class Rule:
    """One rule compiled for one method: what it matches and how it answers."""

    label: str                            # its name, or "rules[N]" (its place in the file)
    request: Any                          # a subset of the request's JSON form (canonical field names), or None
    metadata: Mapping[str, str]
    script: Message | None                # pb.Script (unary) or pb.PipeScript (streams), validated
    reply: Message | None                 # the response type's message, for complete (and each pushed one)
    mix: Mix | None

    def matches(self, metadata: Mapping[str, Any], request_json: "RequestJson") -> bool:
        for key, want in self.metadata.items():
            got = metadata.get(key)
            if isinstance(got, bytes):
                got = got.decode(errors="replace")
            if got != want:
                return False
        return self.request is None or _subset(self.request, request_json.get())


class RequestJson:
    """A request's JSON form, made once and only when a rule asks for it (default-valued fields
    included, so `{amount: 0}` matches a request that leaves amount at 0)."""

    __slots__ = ("_msg", "_dict")

    def __init__(self, msg: Message | None) -> None:
        self._msg, self._dict = msg, None

    def get(self) -> Any:
        if self._dict is None and self._msg is not None:
            try:   # an Any resolves in the schema's pool, where the request's own type lives
                self._dict = json_format.MessageToDict(self._msg, preserving_proto_field_name=True,
                                                       always_print_fields_with_no_presence=True,
                                                       descriptor_pool=self._msg.DESCRIPTOR.file.pool)
            except (TypeError, KeyError, ValueError):   # an Any of a type the schema lacks: no JSON form,
                self._msg = None                        # so no request pattern matches (the call still runs)
        return self._dict


@dataclass
class RuleSet:
    """Rules compiled against a schema: for each method, its rules in file order."""

    by_method: dict[str, list[Rule]]
    count: int
    source: str = ""

    def first_match(self, method: str, metadata: Mapping[str, Any], request: Message | None) -> Rule | None:
        rules = self.by_method.get(method)
        if not rules:
            return None
        request_json = RequestJson(request)
        for rule in rules:
            if rule.matches(metadata, request_json):
                return rule
        return None

    @classmethod
    def empty(cls) -> "RuleSet":
        return cls({}, 0)


def parse_rules(text: str, schema: Schema, limits: Limits = Limits(), *, source: str = "rules") -> RuleSet:
    data, lines = _parse(text, source)
    if data is None:
        data = {"rules": []}
    if not isinstance(data, dict) or set(data) - {"rules"}:
        extra = sorted(set(data) - {"rules"}) if isinstance(data, dict) else []
        raise RulesError(f"{source}:1: expected a mapping with one key, 'rules' (a list)"
                         + (f"; unknown key {extra[0]!r}" if extra else ""))
    rules = data.get("rules") or []
    if not isinstance(rules, list):
        raise RulesError(f"{source}:{lines.get(-1, 1)}: rules must be a list")
    by_method: dict[str, list[Rule]] = {}
    for index, raw in enumerate(rules):
        where = f"{source}:{lines.get(index, 1)}: rules[{index}]"
        for method, rule in _compile(raw, index, where, schema, limits):
            by_method.setdefault(method, []).append(rule)
    return RuleSet(by_method, len(rules), source)


def _parse(text: str, source: str) -> tuple[Any, dict[int, int]]:
    """The data, and the line (1-based) of each rule (-1: of the rules list itself)."""
    try:
        data = json.loads(text)
        return data, _json_lines(text, data)
    except ValueError:
        pass
    try:
        import yaml
    except ImportError:
        raise RulesError(f"{source}: not JSON, and YAML needs PyYAML: pip install 'callstate[standin]'") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=_text_keys_loader())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if getattr(exc, "context", None) == "while scanning an alias":   # `method: */Charge`: YAML's * is an alias
            problem += "; a value that starts with * is read as a YAML alias: quote it, method: '*/Charge'"
        raise RulesError(f"{source}{line}: not valid YAML ({problem})") from None
    lines: dict[int, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if key.value == "rules":
                lines[-1] = value.start_mark.line + 1
                if isinstance(value, yaml.SequenceNode):
                    lines.update({i: item.start_mark.line + 1 for i, item in enumerate(value.value)})
    return data, lines


@functools.cache
def _text_keys_loader() -> Any:
    """A safe YAML loader whose mapping keys are their text, as JSON's are: YAML 1.1 reads a
    plain `on`, `no`, `yes`, `off` or `null` as true, false or None, and a request field of that
    name (`match: {request: {on: true}}`) would be "Failed to parse True field"."""
    import yaml

    class TextKeys(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        loader.flatten_mapping(node)   # `<<` merge keys, as the safe loader takes them
        return {key.value if isinstance(key, yaml.ScalarNode) else loader.construct_object(key):
                loader.construct_object(value) for key, value in node.value}

    TextKeys.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return TextKeys


def _json_lines(text: str, data: Any) -> dict[int, int]:
    """JSON has no node marks: each rule's line is that of its opening brace, found in order."""
    lines: dict[int, int] = {}
    rules = data.get("rules") if isinstance(data, dict) else None
    if not isinstance(rules, list):
        return lines
    start = text.find('"rules"')
    pos = text.find("[", start) + 1 if start >= 0 else 0
    decoder = json.JSONDecoder()
    for i in range(len(rules)):
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        lines[i] = text.count("\n", 0, pos) + 1
        try:
            _, pos = decoder.raw_decode(text, pos)
        except ValueError:
            break
    return lines


def _compile(raw: Any, index: int, where: str, schema: Schema, limits: Limits) -> Iterable[tuple[str, Rule]]:
    _check_keys(raw, where)
    label = _label(raw.get("name"), index, where)
    pattern = raw.get("method")
    methods = _methods(pattern, schema, where)
    match = _match(raw.get("match"), where)
    metadata = _metadata(match.get("metadata"), where)
    request = match.get("request")
    script_fields = _optional_mapping(raw.get("script"), f"{where}.script",
                                      "a mapping of script fields (outcome, abort_code, ...)")
    mix = _mix(raw.get("mix"), f"{where}.mix")
    if mix is not None and script_fields and script_fields.get("outcome") is not None:
        raise RulesError(f"{where}: script.outcome and mix both choose the outcome: give one")
    reply = raw.get("reply")
    wildcard = "*" in pattern
    if request is not None:
        methods = _methods_for_request(request, methods, wildcard, where)
    for method in methods:
        m_where = f"{where} ({method.name})"
        if request is not None and method.kind in (PIPE_IN, PIPE_BOTH):
            if not wildcard:
                raise RulesError(f"{m_where}.match.request: a {_shape(method)} method has no single request to match")
            continue   # a wildcard rule applies to the methods whose request it can see
        script = None if script_fields is None else _script(script_fields, method, f"{m_where}.script", limits)
        if script is not None and reply is not None:
            _check_reply_goes_out(method, script, m_where)
        yield method.name, Rule(
            label=label,
            request=None if request is None else _canonical(request, method, f"{m_where}.match.request"),
            metadata=metadata,
            script=script,
            reply=None if reply is None else _reply(method, reply, f"{m_where}.reply", limits),
            mix=mix)


def _methods_for_request(request: Any, methods: list[Method], wildcard: bool, where: str) -> list[Method]:
    """The methods a rule with a request pattern applies to: with a wildcard, those whose request
    has the fields it names (none: the first, whose error then says which field is not there)."""
    if wildcard:
        methods = [m for m in methods if _names_fields_of(request, m)] or methods[:1]
    if not isinstance(request, dict) and not _json_is_its_own(methods[0]):
        raise RulesError(f"{where}.match.request: a mapping: a subset of the request's JSON form")
    return methods


def _check_reply_goes_out(method: Method, script: Message, where: str) -> None:
    """A server- or bidi-streaming method sends its rule's reply as each of the script's messages:
    a script that leaves `messages` at 0 (and does not hold) sends none, and the reply would
    never go out. (With no script at all, the stream sends the default count.)"""
    if method.kind in (PIPE_OUT, PIPE_BOTH) and script.messages == 0 and script.outcome != OUTCOMES[HOLD]:
        raise RulesError(f"{where}.script.messages: 0 (not given), so the {_shape(method)} method would "
                         "never send its reply (sent as each of the stream's messages): give messages: N")


def _json_is_its_own(method: Method) -> bool:
    """A request of a well-known type (a wrapper, Timestamp, Duration, Value, ...): its JSON form
    may be a value that is not an object, and a pattern of that value matches it whole."""
    name = method.request.DESCRIPTOR.full_name
    return is_well_known(name) and name not in _OBJECT_JSON


_OBJECT_JSON = (ANY, f"{WELL_KNOWN}Struct", f"{WELL_KNOWN}Empty")   # well-known, and a JSON object all the same


def _names_fields_of(pattern: Any, method: Method) -> bool:
    """Whether each key of a request pattern is a field of the method's request (by its .proto or
    JSON name; an extension, `[pkg.ext]`, is left for the parse to judge). A pattern that is not
    a mapping fits the requests of a well-known type."""
    if not isinstance(pattern, dict):
        return _json_is_its_own(method)
    desc = method.request.DESCRIPTOR
    if desc.full_name in (ANY, f"{WELL_KNOWN}Struct"):   # an Any's @type, a Struct's keys: their own JSON
        return True
    names = {f.name for f in desc.fields} | {f.json_name for f in desc.fields}
    return all(key in names or str(key).startswith("[") for key in pattern)


def _check_keys(raw: Any, where: str) -> None:
    if not isinstance(raw, dict):
        raise RulesError(f"{where}: a rule is a mapping with {', '.join(RULE_KEYS)}")
    for key in raw:
        if key not in RULE_KEYS:
            raise RulesError(f"{where}: unknown key {key!r}; a rule has {', '.join(RULE_KEYS)}")


def _label(name: Any, index: int, where: str) -> str:
    """The rule's name, or its place in the file."""
    if name is not None and not (isinstance(name, str) and name.strip()):
        raise RulesError(f"{where}.name: must be a non-empty string")
    return name or f"rules[{index}]"


def _methods(pattern: Any, schema: Schema, where: str) -> list[Method]:
    """The schema's methods the rule's method name (with `*` wildcards) matches: at least one."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise RulesError(f"{where}.method: required: the full method name, pkg.Svc/Method (* matches any part)")
    regex = method_filter(pattern)
    methods = [m for name, m in sorted(schema.methods.items()) if regex.fullmatch(name)]
    served = [m for m in methods if not m.service.startswith(OWN_SERVICE_PREFIXES)]
    if methods and not served:   # the server answers these itself: a rule on them would never apply
        raise RulesError(f"{where}.method: {pattern!r} names the server's own {methods[0].service}: a stand-in runs "
                         f"{', '.join(p + '*' for p in OWN_SERVICE_PREFIXES)} itself, no rule answers them")
    if not served:
        known = sorted(m.name for m in schema.methods.values() if not m.service.startswith(OWN_SERVICE_PREFIXES))
        hint = "" if "*" in pattern else did_you_mean(normalise_method_name(pattern), known)
        raise RulesError(f"{where}.method: no method of the schema matches {pattern!r}{hint}; "
                         f"the schema has: {listed(known)}")
    return served


def _match(match: Any, where: str) -> dict[str, Any]:
    match = match or {}
    if not isinstance(match, dict):
        raise RulesError(f"{where}.match: a mapping with request and/or metadata")
    for key in match:
        if key not in MATCH_KEYS:
            raise RulesError(f"{where}.match: unknown key {key!r}; expected request or metadata")
    return match


def _metadata(metadata: Any, where: str) -> dict[str, str]:
    """Header name (lower case) to the text its value must have."""
    metadata = metadata or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, (str, int, float, bool)) for v in metadata.values()):
        raise RulesError(f"{where}.match.metadata: a mapping of header name to value")
    return {str(k).lower(): (json.dumps(v) if isinstance(v, bool) else str(v)) for k, v in metadata.items()}


def _optional_mapping(value: Any, where: str, what: str) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        raise RulesError(f"{where}: {what}")
    return value


def _shape(method: Method) -> str:
    return SHAPE_NAMES[method.kind]


def _script(fields: Mapping[str, Any], method: Method, where: str, limits: Limits) -> Message:
    try:
        script = from_fields(fields, method.kind)
        if method.kind == UNARY:
            validate(script, limits)   # type: ignore[arg-type]
        else:
            validate_pipe(script, method.kind, limits)   # type: ignore[arg-type]
    except ScriptError as exc:
        message = str(exc).removeprefix(f"script.{exc.field}: ")
        raise RulesError(f"{where}.{exc.field}: {message}") from None
    return script


def _mix(raw: Any, where: str) -> Mix | None:
    if raw is None:
        return None
    if isinstance(raw, dict):
        raw = ",".join(f"{k}={v}" for k, v in raw.items())
    if not isinstance(raw, str):
        raise RulesError(f"{where}: a mapping of outcome to weight, e.g. {{complete: 80, abort: 20}}")
    try:
        return Mix.parse(raw, tuple(OUTCOMES))
    except MixError as exc:
        raise RulesError(f"{where}: {exc}") from None


def _message(cls: type[Message], data: Mapping[str, Any] | str, where: str, partial: bool = False) -> Message:
    try:
        return message_from_json(cls, data, where=where, partial=partial)
    except SchemaError as exc:
        raise RulesError(str(exc)) from None


def _reply(method: Method, value: Any, where: str, limits: Limits) -> Message:
    """The rule's reply: the response's JSON form, a mapping, or for a well-known type whose JSON
    is not an object (Timestamp, Duration, a wrapper, Value) that JSON value itself; no larger
    than the server's reply limit, so that every caller can take it (each message of a stream)."""
    if isinstance(value, dict):
        reply = _message(method.response, value, where)
    elif not is_well_known(method.response.DESCRIPTOR.full_name):
        raise RulesError(f"{where}: a mapping: the response in its JSON form")
    else:
        reply = _message(method.response, _json_text(value, where), where)
    if (size := reply.ByteSize()) > limits.max_reply_bytes:
        raise RulesError(f"{where}: {size} bytes, over the server's reply limit ({limits.max_reply_bytes} bytes, "
                         "--max-reply-bytes; a caller's default receive limit is 4 MiB)")
    return reply


def _json_text(value: Any, where: str) -> str:
    try:
        return json.dumps(value)
    except TypeError:   # YAML reads an unquoted date as a date
        raise RulesError(f"{where}: {type(value).__name__} is not a JSON value: quote it") from None


def _canonical(pattern: Any, method: Method, where: str) -> Any:
    """The pattern in the form a request's JSON takes (proto field names, enum names, int64 as
    strings, well-known types as their JSON), restricted to the fields the pattern names; for a
    request of a well-known type whose JSON is a value (`"hi"` for a StringValue), that value."""
    if not isinstance(pattern, dict):
        msg = _message(method.request, _json_text(pattern, where), where, partial=True)
        return json_format.MessageToDict(msg, descriptor_pool=msg.DESCRIPTOR.file.pool)
    msg = _message(method.request, pattern, where, partial=True)
    full = json_format.MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True,
                                     descriptor_pool=msg.DESCRIPTOR.file.pool)
    desc = method.request.DESCRIPTOR
    if desc.full_name == ANY:   # a method that takes an Any (or a Struct, ...) itself
        return _restrict_any(full, pattern, desc.file.pool)
    if is_well_known(desc.full_name):   # a Struct's JSON is its own: a subset of it matches
        return dict(full)
    return _restrict(full, pattern, desc)



def _restrict(full: Mapping[str, Any], given: Mapping[str, Any], desc: Descriptor) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in given.items():
        field = desc.fields_by_name.get(key) or next((f for f in desc.fields if f.json_name == key), None)
        if field is None:   # it parsed, so it is an extension ("[pkg.ext]"): as the JSON form names it, whole
            out[key] = full.get(key)
            continue
        sub = field.message_type
        single = (sub is not None and not sub.GetOptions().map_entry and not _is_repeated(field)
                  and isinstance(value, dict))
        if single and sub.full_name == ANY:
            out[field.name] = _restrict_any(full.get(field.name) or {}, value, sub.file.pool)
        elif single and not is_well_known(sub.full_name):
            out[field.name] = _restrict(full.get(field.name) or {}, value, sub)
        else:
            out[field.name] = full.get(field.name)
    return out


def _restrict_any(full: Mapping[str, Any], given: Mapping[str, Any], pool: Any) -> dict[str, Any]:
    """An Any's pattern: its `@type`, and of the message it packs the fields the pattern names,
    as a plain sub-message matches (a well-known type packed matches whole, as it does unpacked)."""
    if "@type" not in given:   # `{}`: the empty Any
        return dict(full)
    packed = pool.FindMessageTypeByName(str(given["@type"]).rpartition("/")[2])   # parsed: so it is there
    if is_well_known(packed.full_name):
        return dict(full)
    return {"@type": full.get("@type"), **_restrict(full, {k: v for k, v in given.items() if k != "@type"}, packed)}


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _subset(pattern: Any, value: Any) -> bool:
    """Mappings: each key of the pattern present, its value a subset (a key whose value is null: absent,
    the field unset, as proto JSON reads null); anything else: equal."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all((k in value or v is None) and _subset(v, value.get(k))
                                               for k, v in pattern.items())
    return pattern == value


def describe(rules: RuleSet) -> str:
    methods = sorted(rules.by_method)
    return f"{rules.count} rule{'s' if rules.count != 1 else ''} for {len(methods)} method{'s' if len(methods) != 1 else ''}"
