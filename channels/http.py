"""Outbound HTTP for the adapters: one session per provider, bounded timeouts, and the
faults every provider shares (unreachable, timeout, 5xx, Retry-After)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from channels.base import SendResult, SendStatus

DEFAULT_TIMEOUT = 5.0


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    body: Any  # parsed JSON, or None when the body was not JSON
    retry_after: float | None


class Unreachable(Exception):
    """No answer: connection refused, reset, timeout."""

    def __init__(self, why: str, timed_out: bool) -> None:
        super().__init__(why)
        # After a timeout the request may have been carried out.
        self.timed_out = timed_out


def retry_after_of(headers: Any) -> float | None:
    raw = headers.get("Retry-After") if headers is not None else None
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None  # an HTTP date: rare from these providers; the backoff applies


class Http:
    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout,
                json_serialize=lambda v: orjson.dumps(v).decode(),
                connector=aiohttp.TCPConnector(limit=256),
            )
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        params: Any = None,
        json: Any = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> HttpAnswer:
        try:
            async with self.session().request(
                method, url, params=params, json=json, data=data, headers=headers
            ) as response:
                raw = await response.read()
                try:
                    body = orjson.loads(raw) if raw else None
                except orjson.JSONDecodeError:
                    body = None
                return HttpAnswer(response.status, body, retry_after_of(response.headers))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            timed_out = isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError)
            raise Unreachable(type(exc).__name__, timed_out) from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def unreachable(provider: str, why: str) -> SendResult:
    return SendResult(SendStatus.RETRY, "unreachable", f"{provider} did not answer ({why})")


def server_fault(provider: str, answer: HttpAnswer) -> SendResult:
    return SendResult(
        SendStatus.RETRY,
        f"http{answer.status}",
        f"{provider} answered HTTP {answer.status}",
        retry_after=answer.retry_after,
    )
