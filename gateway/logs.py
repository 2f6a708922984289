"""Structured logs: structlog, JSON lines, one event per decision and per send.

Context (request id, business unit, message id) is bound through contextvars. The
``mask_personal_data`` processor runs last before rendering, so no phone number, email,
openid or token reaches the output whatever a call site passes.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import MutableMapping
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


def mask_personal_data(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        event_dict[key] = _mask_value(key, event_dict[key])
    return event_dict


def _orjson_text(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()


class _Stderr:
    """Whatever ``sys.stderr`` is at the time of writing (test captures swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(level: str = "INFO", json: bool = True) -> None:
    logging.basicConfig(format="%(message)s", stream=sys.stderr, level=level)
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_text) if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            mask_personal_data,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(_Stderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
