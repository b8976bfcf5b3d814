"""Dataclass <-> CBOR-map codec with strict, bounded type checks.

Each wire message is a frozen dataclass whose fields use a small set of types:
``int``, ``bool``, ``str``, ``bytes``, nested message dataclasses, and
``tuple[T, ...]`` of those. Decoding refuses missing fields, unknown fields,
wrong types, and strings/byte strings/lists over their caps (``field`` metadata
``max`` overrides the default caps).

**Fast paths.** ``from_obj`` and ``encode_msg`` first try a plan compiled once per class
(field names, types and caps; keys in canonical order) that accepts only the plain case
(exact types, within caps). Anything else, an error included, goes the checked way
(``_from_obj_checked``, ``_cbor.encode(to_obj(...))``), which gives the answer or the
error with its path. The fast path never accepts what the checked way refuses: it is at
least as strict, and on success it builds the same object or writes the same bytes
(``tests/unit/test_wire_fast.py`` compares the two).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, TypeVar

from . import _cbor
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
    try:
        return _fast_from(cls, obj)
    except Exception:  # noqa: BLE001 - not the plain case: the checked way says why
        return _from_obj_checked(cls, obj, where)


def encode_msg(msg: Any, checked: bool = True) -> bytes:
    """``_cbor.encode(to_obj(msg))``; ``checked``: first refuse (``WireError``) what
    ``from_obj`` of that map would refuse, as a receiver's ``decode_body`` would."""
    try:
        return _compiled(type(msg))(msg)
    except Exception:  # noqa: BLE001 - not the plain case: the checked way
        obj = to_obj(msg)
        if checked:
            from_obj(type(msg), obj)
        return _cbor.encode(obj)


class _Slow(Exception):
    """The fast path leaves this value to the checked way."""


def _slow(_value: Any) -> Any:
    raise _Slow


@functools.cache
def _plan(cls: type) -> tuple[int, tuple[tuple[str, Any], ...],
                              tuple[tuple[bytes, str, Any], ...]]:
    """(field count, (name, converter for from_obj) in field order, (encoded key, name,
    encoder) in canonical key order) of a message class."""
    hints = _hints(cls)
    fields = dataclasses.fields(cls)
    conv = tuple((f.name, _converter(hints[f.name], f.metadata.get("max"))) for f in fields)
    enc = sorted((_cbor.enc_text(f.name), f.name,
                  _encoder(hints[f.name], f.metadata.get("max"))) for f in fields)
    return len(fields), conv, tuple(enc)


def _fast_from(cls: type[T], obj: Any) -> T:
    if type(obj) is not dict:
        raise _Slow
    count, conv, _ = _plan(cls)
    if len(obj) != count:
        raise _Slow
    kwargs = {name: c(obj[name]) for name, c in conv}  # KeyError: a field is missing
    return cls(**kwargs)


def _fast_enc(msg: Any, out: list[bytes]) -> None:
    out.append(_compiled(type(msg))(msg))


@functools.cache
def _compiled(cls: type) -> Any:
    """``msg -> bytes``: the canonical CBOR map of a ``cls`` message, written by a function
    made for the class from its plan (keys in canonical order; int, bool, str and bytes
    fields inline, the others by their encoders); ``_Slow`` unless the plain case."""
    _, _, enc = _plan(cls)
    env: dict[str, Any] = {"_Slow": _Slow, "head": _cbor.head, "MAP": _cbor.head(5, len(enc))}
    hints = _hints(cls)
    caps = {f.name: f.metadata.get("max") for f in dataclasses.fields(cls)}
    lines = ["def encode(msg):"]
    if getattr(cls, "__post_init__", None) is not None:
        # its own rules again, as from_obj's cls(**fields) would run them: a frozen message
        # may have been changed behind __post_init__'s back (object.__setattr__)
        lines.append("    msg.__post_init__()")
    parts = ["MAP"]
    for i, (key, name, encoder) in enumerate(enc):
        env[f"K{i}"], env[f"E{i}"] = key, encoder
        tp = hints[name]
        lines.append(f"    v{i} = msg.{name}")
        if tp is int:
            lines.append(f"    if type(v{i}) is not int or not {_cbor.INT_MIN} <= v{i} <= "
                         f"{_cbor.INT_MAX}: raise _Slow")
            parts += [f"K{i}", f"(head(0, v{i}) if v{i} >= 0 else head(1, -1 - v{i}))"]
        elif tp is bytes:
            cap = caps[name] if caps[name] is not None else MAX_BYTES
            lines.append(f"    if type(v{i}) is not bytes or len(v{i}) > {cap}: raise _Slow")
            parts += [f"K{i}", f"head(2, len(v{i}))", f"v{i}"]
        elif tp is str:
            cap = caps[name] if caps[name] is not None else MAX_STR
            lines.append(f"    if type(v{i}) is not str: raise _Slow")
            lines.append(f"    r{i} = v{i}.encode('utf-8')")
            lines.append(f"    if len(r{i}) > {cap}: raise _Slow")
            parts += [f"K{i}", f"head(3, len(r{i}))", f"r{i}"]
        elif tp is bool:
            lines.append(f"    if type(v{i}) is not bool: raise _Slow")
            parts += [f"K{i}", f"(b'\\xf5' if v{i} else b'\\xf4')"]
        else:
            lines.append(f"    o{i} = []")
            lines.append(f"    E{i}(v{i}, o{i})")
            parts += [f"K{i}", f"b''.join(o{i})"]
    lines.append(f"    return b''.join(({', '.join(parts)},))")
    exec("\n".join(lines), env)  # noqa: S102 - source made above from the class's fields
    return env["encode"]


def _converter(tp: Any, maximum: int | None) -> Any:
    """``value -> value`` for the plain case of a field of type ``tp``; else ``_Slow``."""
    if typing.get_origin(tp) is tuple:
        item = _converter(typing.get_args(tp)[0], None)
        cap = maximum if maximum is not None else MAX_ITEMS

        def tuple_of(value: Any) -> Any:
            if type(value) is not list or len(value) > cap:
                raise _Slow
            return tuple([item(v) for v in value])
        return tuple_of
    if dataclasses.is_dataclass(tp):
        return functools.partial(_fast_from, tp)
    if tp is bool or tp is int:
        def plain(value: Any) -> Any:
            if type(value) is not tp:
                raise _Slow
            return value
        return plain
    if tp is str:
        cap = maximum if maximum is not None else MAX_STR

        def text(value: Any) -> Any:
            if type(value) is not str:
                raise _Slow
            if (len(value) if value.isascii() else len(value.encode("utf-8"))) > cap:
                raise _Slow
            return value
        return text
    if tp is bytes:
        cap = maximum if maximum is not None else MAX_BYTES

        def raw(value: Any) -> Any:
            if type(value) is not bytes or len(value) > cap:
                raise _Slow
            return value
        return raw
    return _slow


def _encoder(tp: Any, maximum: int | None) -> Any:
    """``(value, out)`` appending the canonical CBOR of the plain case; else ``_Slow``."""
    if typing.get_origin(tp) is tuple:
        item = _encoder(typing.get_args(tp)[0], None)
        cap = maximum if maximum is not None else MAX_ITEMS

        def tuple_of(value: Any, out: list[bytes]) -> None:
            if type(value) is not tuple or len(value) > cap:
                raise _Slow
            out.append(_cbor.head(4, len(value)))
            for v in value:
                item(v, out)
        return tuple_of
    if dataclasses.is_dataclass(tp):
        def message(value: Any, out: list[bytes]) -> None:
            if type(value) is not tp:
                raise _Slow
            _fast_enc(value, out)
        return message
    if tp is bool:
        def boolean(value: Any, out: list[bytes]) -> None:
            if type(value) is not bool:
                raise _Slow
            out.append(b"\xf5" if value else b"\xf4")
        return boolean
    if tp is int:
        def integer(value: Any, out: list[bytes]) -> None:
            if type(value) is not int:
                raise _Slow
            if value >= 0:
                if value > _cbor.INT_MAX:
                    raise _Slow
                out.append(_cbor.head(0, value))
            else:
                if value < _cbor.INT_MIN:
                    raise _Slow
                out.append(_cbor.head(1, -1 - value))
        return integer
    if tp is str:
        cap = maximum if maximum is not None else MAX_STR

        def text(value: Any, out: list[bytes]) -> None:
            if type(value) is not str:
                raise _Slow
            raw = value.encode("utf-8")
            if len(raw) > cap:
                raise _Slow
            out.append(_cbor.head(3, len(raw)))
            out.append(raw)
        return text
    if tp is bytes:
        cap = maximum if maximum is not None else MAX_BYTES

        def raw(value: Any, out: list[bytes]) -> None:
            if type(value) is not bytes or len(value) > cap:
                raise _Slow
            out.append(_cbor.head(2, len(value)))
            out.append(value)
        return raw
    return lambda value, out: _slow(value)


def _from_obj_checked(cls: type[T], obj: Any, where: str = "") -> T:
    """``from_obj`` field by field, with the path of what is wrong in the error."""
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
