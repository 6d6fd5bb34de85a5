"""Any service: the user's own method a CallstateUser calls (`method`, `--callstate-method`),
as `callstate load --method` does (callstate.schema.drive reads the options the same way).

The schema (.proto files, a descriptor set, or else the target's reflection) is read once per
process and the method found in it is shared by every user of that process; each call takes
the next of the requests (`data`, or `data_file`'s lines, in turn)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import orjson

from callstate.client.channel import ChannelSettings
from callstate.schema import Method
from callstate.schema.drive import Drive, MethodOptions

# the user attributes of a method run, as `callstate load`'s --method options name them
SETTINGS = ("method", "data", "data_file", "proto", "proto_path", "descriptor_set")


@dataclass
class MethodRun:
    """The method of this process's calls and its requests, in turn."""

    drive: Drive
    _cycle: Iterator[Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._cycle = itertools.cycle(self.drive.requests)

    @property
    def method(self) -> Method:
        return self.drive.method

    def next_request(self) -> Any:
        return next(self._cycle)


_RESOLVED: dict[tuple[MethodOptions, str], MethodRun] = {}


def options_of(settings: Mapping[str, Any]) -> MethodOptions:
    """The settings (class attributes or option text) as --method options: a list or one path
    for `proto`/`proto_path`; `data` as JSON text or a dict."""
    data = settings["data"]
    return MethodOptions(method=settings["method"] or None,
                         data=orjson.dumps(data).decode() if isinstance(data, Mapping) else (data or None),
                         data_file=settings["data_file"] or None, proto=_paths(settings["proto"]),
                         proto_path=_paths(settings["proto_path"]), descriptor_set=settings["descriptor_set"] or None)


def _paths(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def resolve(options: MethodOptions, target: str, flag: Callable[[str], str],
            channel: ChannelSettings | None = None) -> MethodRun | None:
    """The process's method run (None without a method), resolved on first use; DriveError when bad."""
    if not options.method:
        options.drive(target, flag=flag)   # a request or schema given without a method: DriveError
        return None
    key = (options, target)
    if key not in _RESOLVED:
        channel = channel or ChannelSettings()   # the target's reflection rides the users' TLS and token
        drive = options.drive(target, credentials=channel.credentials(), metadata=channel.metadata, flag=flag)
        assert drive is not None
        _RESOLVED[key] = MethodRun(drive)
    return _RESOLVED[key]
