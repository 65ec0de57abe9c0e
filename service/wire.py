"""Bodies on the wire: JSON or msgpack in, JSON or msgpack out, and content negotiation.

``Content-Type: application/msgpack`` (also ``application/x-msgpack``, ``application/vnd.msgpack``)
selects msgpack for the request body; ``Accept`` selects the response format (defaulting to the
request's). Anything but JSON or msgpack is a 415. Request bodies are decoded (and validated) by
:func:`service.schemas.decode`; this module encodes the small replies (health, info, errors).
"""

from __future__ import annotations

import json
from typing import Any

import msgpack

from .errors import ApiError

__all__ = ["JSON", "MSGPACK", "MSGPACK_TYPES", "dumps", "encode", "request_format", "response_format"]

JSON = "application/json"
MSGPACK = "application/msgpack"
MSGPACK_TYPES = frozenset({MSGPACK, "application/x-msgpack", "application/vnd.msgpack"})

_json_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_ascii_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False)
dumps = _json_encoder.encode


def request_format(mimetype: str) -> str:
    """Body format from the request's mimetype (parameters already stripped, lower case)."""
    if mimetype in MSGPACK_TYPES:
        return MSGPACK
    if not mimetype or mimetype == JSON or mimetype.endswith("+json"):
        return JSON
    raise ApiError(415, f"unsupported Content-Type {mimetype!r}: send application/json or application/msgpack",
                   "unsupported_media_type")


def response_format(accept: str | None, mimetype: str) -> str:
    """msgpack when Accept names it (or, with no preference, when the request body was msgpack)."""
    if accept:
        if "msgpack" in accept:
            return MSGPACK
        if "json" in accept:
            return JSON
    return MSGPACK if mimetype in MSGPACK_TYPES else JSON


def encode(obj: Any, fmt: str) -> bytes:
    """``obj`` as JSON or msgpack. Non-finite floats never reach JSON (a ``ValueError`` here is
    the app's bug and answered as a JSON 500); text that is not valid Unicode goes out escaped."""
    if fmt == MSGPACK:
        return msgpack.packb(obj, use_bin_type=True)
    text = dumps(obj)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: "\\ud800" is valid JSON, its UTF-8 is not
        return _ascii_encoder.encode(obj).encode("ascii")
