"""How the library's bytes become an AllSource payload, and back, exactly.

The library hands a recorder bytes: JSON from its transcoder, or whatever a
compressor or a cipher made of it, and expects the same bytes back. A JSON
object is stored as a JSON payload, so it stays queryable in SQL
(`payload->>'amount'`); what jsonb does not keep of its text is kept in the
event's metadata (`state`), so the bytes come back exactly:

* the layout: compact (`{"a":1}`) or spaced (`{"a": 1}`), non-ASCII as is or
  escaped (`ensure_ascii`), as Python's `json.dumps` writes them (compact, the library's, is the default
  and is not recorded);
* the key order of each object that jsonb would reorder (jsonb sorts keys
  by length, then bytes), as the positions of its keys in jsonb's order.

Anything else is stored as a base64 JSON string, marked `"state":
{"encoding": "base64"}`: bytes that are not JSON objects, and the objects
whose text this cannot rebuild (other spacing, duplicate keys) or whose
value jsonb would change (numbers in exponent notation, which jsonb writes
out in full, -0, NaN and Infinity, the escapes jsonb refuses: \\u0000 and
surrogates, even paired), and objects nested over 120 levels (AllSource
parses a batch of events to a depth of 128). An object is stored as JSON
only if Python's `json.dumps` writes its parsed value back as exactly its
bytes.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

# The metadata key that says how the payload holds the bytes.
STATE_KEY = "state"

_ESCAPES_JSONB_REFUSES = re.compile(r"\\u(0000|[dD][89a-fA-F])")
_LAYOUTS = {
    "compact": {"separators": (",", ":"), "ensure_ascii": False},
    "spaced": {"separators": (", ", ": "), "ensure_ascii": False},
    "compact-ascii": {"separators": (",", ":"), "ensure_ascii": True},
    "spaced-ascii": {"separators": (", ", ": "), "ensure_ascii": True},
}


_COMPACT = {"layout": "compact"}


class _NotKeptByJsonb(ValueError):
    pass


def _refuse(_: str) -> Any:
    raise _NotKeptByJsonb


def _float_jsonb_keeps(text: str) -> float:
    if "e" in text or "E" in text or text.startswith("-0") and float(text) == 0:
        raise _NotKeptByJsonb
    return float(text)


# Built once: json.loads and json.dumps with options build one per call.
_STRICT_DECODER = json.JSONDecoder(parse_constant=_refuse, parse_float=_float_jsonb_keeps)
_DECODER = json.JSONDecoder()
_ENCODERS = {layout: json.JSONEncoder(**options) for layout, options in _LAYOUTS.items()}


def _jsonb_key(key: str) -> tuple[int, bytes]:
    encoded = key.encode("utf-8")
    return len(encoded), encoded


# AllSource parses a batch of events with a nesting limit of 128 levels, two
# of them the batch's own: deeper states are stored as base64.
_MAX_DEPTH = 120


def _key_orders(value: Any, orders: list[list[int] | None], depth: int = 1) -> None:
    """Appends, object by object (pre-order), where each key sits in jsonb's
    order, or None when jsonb keeps the object's order."""
    if depth > _MAX_DEPTH:
        raise _NotKeptByJsonb
    if isinstance(value, dict):
        keys = list(value)
        in_jsonb_order = sorted(keys, key=_jsonb_key)
        if keys == in_jsonb_order:
            orders.append(None)
        else:
            rank = {key: i for i, key in enumerate(in_jsonb_order)}
            orders.append([rank[key] for key in keys])
        for item in value.values():
            _key_orders(item, orders, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _key_orders(item, orders, depth + 1)


def _restore(value: Any, orders: list[list[int] | None], at: list[int]) -> Any:
    """`value` (as parsed from jsonb's text) with each object's keys back in
    their recorded order; `at` counts the objects."""
    if isinstance(value, dict):
        order = orders[at[0]] if at[0] < len(orders) else None
        at[0] += 1
        # Sorted as they were when the order was recorded, whatever order
        # the server's text has them in.
        keys = sorted(value, key=_jsonb_key)
        if order is not None:
            keys = [keys[i] for i in order]
        return {key: _restore(value[key], orders, at) for key in keys}
    if isinstance(value, list):
        return [_restore(item, orders, at) for item in value]
    return value


def _as_json(state: bytes) -> tuple[str, dict[str, Any]] | None:
    """The payload and the recipe that rebuild `state`, if it is a JSON
    object this can store as one."""
    if not state.startswith(b"{"):
        return None
    try:
        text = state.decode("utf-8")
        if _ESCAPES_JSONB_REFUSES.search(text):
            return None
        value = _STRICT_DECODER.decode(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    # The layout that writes the parsed value back as exactly these bytes
    # (duplicate keys, other spacing, numbers Python writes otherwise: none).
    for layout, encoder in _ENCODERS.items():
        if encoder.encode(value) == text:
            break
    else:
        return None
    orders: list[list[int] | None] = []
    try:
        _key_orders(value, orders)
    except _NotKeptByJsonb:
        return None
    while orders and orders[-1] is None:
        orders.pop()
    recipe: dict[str, Any] = {"layout": layout}
    if orders:
        recipe["key_order"] = orders
    return text, recipe


def encode_state(state: bytes) -> tuple[str, dict[str, Any] | None]:
    """The payload (JSON text) and the metadata that store `state` (None for
    a compact object whose keys jsonb keeps in order)."""
    stored = _as_json(state)
    if stored is not None:
        text, recipe = stored
        return text, None if recipe == _COMPACT else {STATE_KEY: recipe}
    encoded = json.dumps(base64.b64encode(state).decode("ascii"))
    return encoded, {STATE_KEY: {"encoding": "base64"}}


def decode_state(payload: str, recipe: dict[str, Any] | None) -> bytes:
    """The bytes `encode_state` stored: `payload` is the jsonb's text,
    `recipe` the metadata's `state` entry."""
    recipe = recipe or _COMPACT
    if recipe.get("encoding") == "base64":
        return base64.b64decode(json.loads(payload))
    # jsonb's text has no constants or exponents: the plain parser will do.
    restored = _restore(_DECODER.decode(payload), recipe.get("key_order", []), [0])
    return _ENCODERS[recipe["layout"]].encode(restored).encode("utf-8")
