"""Structured logs: structlog, JSON lines; one event per decision (one per round of a
batch) and one per send.

Context (request id, business unit, message id) is bound through contextvars. The
``mask_personal_data`` processor runs last before rendering, so no phone number, email,
openid or token reaches the output whatever a call site passes.
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import os
import sys
import time
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog

from gateway.masking import mask_email, mask_phone, mask_text, mask_token

_SECRET_KEYS = ("token", "secret", "password", "authorization", "api_key", "key")
_MASK_BY_KEY = {"phone": mask_phone, "email": mask_email, "openid": mask_token, "unionid": mask_token}


@functools.lru_cache(maxsize=4096)
def _key_kind(key: str) -> str:
    lowered = key.lower()
    if lowered in _MASK_BY_KEY:
        return lowered
    if any(lowered == s or lowered.endswith("_" + s) for s in _SECRET_KEYS):
        return "secret"
    return ""


def _mask_value(key: str, value: Any) -> Any:
    kind = _key_kind(key)
    if kind == "secret":
        return "***"
    if kind and isinstance(value, str):
        return _MASK_BY_KEY[kind](value)
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, dict):
        return {k: _mask_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask_value(key, v) for v in value]
    return value


# Fields whose values Herald itself makes (its ids, enum values, policy names, the
# level and time): nothing personal can be in them, so they skip the patterns. Anything
# a caller chose (request ids, dedup keys, details, errors) is masked.
_OURS = frozenset(
    {
        "event",
        "level",
        "timestamp",
        "message_id",
        "user_ref",
        "bu",
        "channel",
        "provider",
        "result",
        "category",
        "outcome",
        "reason",
        "lane",
        "count",
        "deliveries",
        "policy_version",
    }
)


_PLAIN = frozenset({str, int, float, bool, type(None)})
_second: list[Any] = [-1, ""]  # the current second and its text, made once a second


def _timestamp(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """ISO 8601 in UTC with microseconds, as structlog's TimeStamper(fmt="iso", utc=True)
    writes it, for a fraction of its cost."""
    now = time.time()
    second = int(now)
    if second != _second[0]:
        _second[:] = [second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")]
    event_dict["timestamp"] = f"{_second[1]}.{int((now - second) * 1_000_000):06d}Z"
    return event_dict


# Fields every line of this process carries (``serve --processes``: which process).
_PROCESS: dict[str, Any] = {}


def bind_process(**fields: Any) -> None:
    _PROCESS.update(fields)


def _process_fields(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if _PROCESS:
        event_dict.update(_PROCESS)
    return event_dict


def mask_personal_data(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():
        if key not in _OURS or type(value) not in _PLAIN:
            event_dict[key] = _mask_value(key, value)
    return event_dict


def _orjson_text(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()


class _Lines:
    """Log lines to whatever ``sys.stderr`` is at the time of writing (test captures
    swap it). Inside the event loop the lines of one turn go out in one write at the end
    of the turn (a write and a flush per line cost more than rendering it); outside it,
    and at exit, at once. A process killed outright loses at most one turn's lines."""

    def __init__(self) -> None:
        self._pending: list[str] = []

    def msg(self, message: str) -> None:
        if self._pending:  # a flush is due at the end of this turn
            self._pending.append(message + "\n")
            return
        self._pending.append(message + "\n")
        try:
            asyncio.get_running_loop().call_soon(self.flush)
        except RuntimeError:
            self.flush()

    debug = info = warning = warn = error = critical = exception = fatal = failure = msg

    def flush(self) -> None:
        if not self._pending:
            return
        text, self._pending = "".join(self._pending), []
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
        except (OSError, ValueError):  # stderr closed or gone: nothing to tell it
            pass


_LINES = _Lines()
atexit.register(_LINES.flush)


def colour_wanted() -> bool:
    """Colour in console logs only on a terminal (the lines go to stderr), and never
    with ``NO_COLOR`` set (no-color.org): a file, a pipe or a log collector gets plain
    text, not escape codes."""
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed
        return False


def configure(level: str = "INFO", json: bool = True) -> None:
    logging.basicConfig(format="%(message)s", stream=sys.stderr, level=level)
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_text)
        if json
        else structlog.dev.ConsoleRenderer(colors=colour_wanted())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _process_fields,
            structlog.processors.add_log_level,
            _timestamp,
            structlog.processors.format_exc_info,
            mask_personal_data,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=lambda *_: _LINES,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
