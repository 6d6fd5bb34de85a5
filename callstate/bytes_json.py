"""Bytes in a message's proto JSON form must be base64, as protobuf's other runtimes require.

protobuf's Python parser decodes a bytes field with `base64.urlsafe_b64decode`, which drops
every character outside the alphabet: `"photo": "!!"` became empty bytes and `"hello world"`
other bytes than meant, and the request went out. grpcurl and buf curl refuse both. This
walks the JSON beside its message descriptor and names the first bytes value that is not
base64 (the standard or the URL-safe alphabet, padded or not).
"""

from __future__ import annotations

import re
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

_BASE64 = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")
_BYTES_VALUE = "google.protobuf.BytesValue"
_ANY = "google.protobuf.Any"
_WELL_KNOWN = "google.protobuf."


def is_base64(value: Any) -> bool:
    """Text in either base64 alphabet, padded or not (a value of another JSON type is protobuf's to refuse)."""
    if not isinstance(value, str):
        return True
    return _BASE64.fullmatch(value) is not None and len(value.rstrip("=")) % 4 != 1


def bad_bytes(data: Any, desc: Descriptor, path: str = "") -> tuple[str, str] | None:
    """The path and value of the first bytes value in `data` (the JSON form of a `desc` message,
    already parsed by protobuf) that is not base64; None when there is none."""
    if desc.full_name == _BYTES_VALUE:   # its JSON is the base64 text itself
        return None if is_base64(data) else (path or "value", str(data))
    if desc.full_name == _ANY:
        return _bad_in_any(data, desc, path)
    if desc.full_name.startswith(_WELL_KNOWN) or not isinstance(data, dict):   # Struct, Timestamp, ...: no bytes
        return None
    for key, value in data.items():
        field = desc.fields_by_name.get(key) or next((f for f in desc.fields if f.json_name == key), None)
        if field is None:   # an extension ("[pkg.ext]") or an Any's "@type"
            continue
        where = f"{path}.{field.name}" if path else field.name
        found = _bad_in_field(field, value, where)
        if found is not None:
            return found
    return None


def _bad_in_field(field: FieldDescriptor, value: Any, where: str) -> tuple[str, str] | None:
    sub = field.message_type
    if sub is not None and sub.GetOptions().map_entry:
        if not isinstance(value, dict):
            return None
        item = sub.fields_by_name["value"]
        return next((found for key, each in value.items()
                     if (found := _bad_in_value(item, each, f"{where}[{key}]")) is not None), None)
    if field.is_repeated and isinstance(value, list):
        return next((found for i, each in enumerate(value)
                     if (found := _bad_in_value(field, each, f"{where}[{i}]")) is not None), None)
    return _bad_in_value(field, value, where)


def _bad_in_value(field: FieldDescriptor, value: Any, where: str) -> tuple[str, str] | None:
    if field.type == FieldDescriptor.TYPE_BYTES:
        return None if is_base64(value) else (where, str(value))
    if field.message_type is not None:
        return bad_bytes(value, field.message_type, where)
    return None


def _bad_in_any(data: Any, desc: Descriptor, path: str) -> tuple[str, str] | None:
    if not isinstance(data, dict) or not isinstance(data.get("@type"), str):
        return None
    try:   # it parsed, so the type is in the pool
        packed = desc.file.pool.FindMessageTypeByName(data["@type"].rpartition("/")[2])
    except KeyError:
        return None
    if packed.full_name.startswith(_WELL_KNOWN):   # packed with its own JSON under "value"
        return bad_bytes(data.get("value"), packed, f"{path}.value" if path else "value")
    return bad_bytes({k: v for k, v in data.items() if k != "@type"}, packed, path)
