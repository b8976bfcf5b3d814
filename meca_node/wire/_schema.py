"""Dataclass <-> CBOR-map codec with strict, bounded type checks.

Each wire message is a frozen dataclass whose fields use a small set of types:
``int``, ``bool``, ``str``, ``bytes``, nested message dataclasses, and
``tuple[T, ...]`` of those. Decoding refuses missing fields, unknown fields,
wrong types, and strings/byte strings/lists over their caps (``field`` metadata
``max`` overrides the default caps).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, TypeVar

from ._errors import WireError

MAX_STR = 1024
MAX_BYTES = 1024
MAX_ITEMS = 256

T = TypeVar("T")


def capped(maximum: int, **kwargs: Any) -> Any:
    """A dataclass field whose str/bytes length or tuple length is capped at ``maximum``."""
    return dataclasses.field(metadata={"max": maximum}, **kwargs)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def to_obj(msg: Any) -> dict[str, Any]:
    """The CBOR-ready map of a message dataclass (field names are the keys)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(msg):
        out[f.name] = _to(getattr(msg, f.name))
    return out


def _to(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return to_obj(value)
    if isinstance(value, tuple):
        return [_to(v) for v in value]
    return value


def from_obj(cls: type[T], obj: Any, where: str = "") -> T:
    """Build ``cls`` from a decoded CBOR map, checking every field; raises ``WireError``."""
    where = where or cls.__name__
    if not isinstance(obj, dict):
        raise WireError("malformed", f"{where}: expected a map")
    hints = _hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    names = {f.name for f in fields}
    unknown = set(obj) - names
    if unknown:
        raise WireError("malformed", f"{where}: unknown field(s) {sorted(unknown)[:5]}")
    kwargs: dict[str, Any] = {}
    for f in fields:
        if f.name not in obj:
            raise WireError("malformed", f"{where}: missing field {f.name!r}")
        kwargs[f.name] = _from(hints[f.name], obj[f.name], f"{where}.{f.name}",
                               f.metadata.get("max"))
    try:
        return cls(**kwargs)
    except WireError:
        raise
    except (ValueError, TypeError) as exc:
        raise WireError("malformed", f"{where}: {exc}") from None


def _from(tp: Any, value: Any, where: str, maximum: int | None) -> Any:
    origin = typing.get_origin(tp)
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list):
            raise WireError("malformed", f"{where}: expected a list")
        cap = maximum if maximum is not None else MAX_ITEMS
        if len(value) > cap:
            raise WireError("malformed", f"{where}: {len(value)} items > cap {cap}")
        return tuple(_from(item_tp, v, f"{where}[{i}]", None) for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return from_obj(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise WireError("malformed", f"{where}: expected a boolean")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise WireError("malformed", f"{where}: expected an integer")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise WireError("malformed", f"{where}: expected a text string")
        cap = maximum if maximum is not None else MAX_STR
        size = len(value.encode("utf-8"))  # caps count bytes, as CDDL's .size does
        if size > cap:
            raise WireError("malformed", f"{where}: text of {size} bytes > cap {cap}")
        return value
    if tp is bytes:
        if not isinstance(value, bytes):
            raise WireError("malformed", f"{where}: expected a byte string")
        cap = maximum if maximum is not None else MAX_BYTES
        if len(value) > cap:
            raise WireError("malformed", f"{where}: {len(value)} bytes > cap {cap}")
        return value
    raise TypeError(f"unsupported schema type {tp!r} at {where}")  # a bug in a message class
