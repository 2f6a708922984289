"""A lean pipelining client for one Redis node: the store's hot path.

Every store call is already a pipeline (``connection.Connection``), so what it needs
from a client is small: write the packed commands of a pipeline in one go and read the
replies back in order. This does exactly that over a few persistent connections, with
hiredis packing and parsing in C and one timer per pipeline, where a general client
spends most of a decision's CPU on per-command bookkeeping (a timeout context and a
reply callback per command, a connection checkout per pipeline).

Replies come back as Redis sends them, except for the few commands whose shape the
store reads in redis-py's parsed form (``PARSED``), so the store's code is the same on
a single node and on a cluster (where redis-py's cluster client does the routing).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Command = tuple[Any, ...]


def _pairs(flat: Any) -> dict[bytes, Any]:
    return dict(zip(flat[::2], flat[1::2], strict=True)) if flat else {}


def _entries(raw: Any) -> list[tuple[bytes, dict[bytes, Any] | None]]:
    return [(entry[0], None if entry[1] is None else _pairs(entry[1])) for entry in raw or ()]


def _streams(raw: Any) -> list[list[Any]] | None:
    return None if raw is None else [[stream[0], _entries(stream[1])] for stream in raw]


def _autoclaim(raw: Any) -> list[Any]:
    return [raw[0], _entries(raw[1]), *raw[2:]]


def _pending(raw: Any) -> list[dict[str, Any]]:
    return [
        {"message_id": item[0], "consumer": item[1], "time_since_delivered": item[2], "times_delivered": item[3]}
        for item in raw or ()
    ]


# Replies the store reads in redis-py's parsed form.
PARSED: dict[str, Callable[[Any], Any]] = {
    "HGETALL": _pairs,
    "XRANGE": _entries,
    "XREVRANGE": _entries,
    "XAUTOCLAIM": _autoclaim,
    "XREADGROUP": _streams,
    "XPENDING": _pending,
    "SSCAN": lambda raw: [int(raw[0]), raw[1]],  # the cursor as a number, as redis-py gives it
    # The cursor as a number and (member, score) pairs, as redis-py gives them.
    "ZSCAN": lambda raw: [int(raw[0]), list(zip(raw[1][::2], map(float, raw[1][1::2]), strict=True))],
}


def _error(reply: hiredis.ReplyError) -> ResponseError:
    text = str(reply)
    return NoScriptError(text) if text.startswith("NOSCRIPT") else ResponseError(text)


class _Protocol(asyncio.Protocol):
    """One connection: pipelines written whole, replies handed back in order."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader(replyError=hiredis.ReplyError)
        self._waiting: deque[tuple[int, list[Any], asyncio.Future[list[Any]]]] = deque()
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            reply = self._reader.gets()
            if reply is False:
                return
            if not self._waiting:  # nothing asked for it: the stream is out of step
                self.close(RedisConnectionError("a reply nobody asked for"))
                return
            count, replies, future = self._waiting[0]
            replies.append(_error(reply) if isinstance(reply, hiredis.ReplyError) else reply)
            if len(replies) == count:
                self._waiting.popleft()
                if not future.done():
                    future.set_result(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or RedisConnectionError("connection closed by the server")
        while self._waiting:
            _, _, future = self._waiting.popleft()
            if not future.done():
                future.set_exception(RedisConnectionError(f"connection lost ({self.lost})"))

    def send(self, packed: bytes, count: int) -> asyncio.Future[list[Any]]:
        assert self.transport is not None
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._waiting.append((count, [], future))
        self.transport.write(packed)
        return future

    @property
    def usable(self) -> bool:
        return self.transport is not None and self.lost is None and not self.transport.is_closing()

    def close(self, why: Exception) -> None:
        if self.transport is not None:
            self.transport.close()
        self.connection_lost(why)


class RespPool:
    """A few connections to one Redis node, opened on demand, reopened after a fault;
    pipelines take turns on them."""

    def __init__(self, url: str, *, timeout: float, size: int = 2) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"not a redis:// or rediss:// URL: {parts.scheme}://...")
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        path = parts.path.lstrip("/")
        self._db = int(path) if path.isdigit() else 0
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "rediss" else None
        self._timeout = timeout
        self._slots: list[_Protocol | None] = [None] * size
        self._opening: list[asyncio.Lock] = [asyncio.Lock() for _ in range(size)]
        self._turn = 0

    async def _open(self, index: int) -> _Protocol:
        async with self._opening[index]:
            current = self._slots[index]
            if current is not None and current.usable:
                return current
            loop = asyncio.get_running_loop()
            try:
                _, protocol = await asyncio.wait_for(
                    loop.create_connection(_Protocol, self._host, self._port, ssl=self._ssl), self._timeout
                )
            except TimeoutError as exc:
                raise RedisTimeoutError(f"connecting took longer than {self._timeout}s") from exc
            except OSError as exc:
                raise RedisConnectionError(f"cannot connect ({exc.strerror or exc})") from exc
            setup: list[Command] = []
            if self._password is not None:
                setup.append(("AUTH", self._username, self._password) if self._username else ("AUTH", self._password))
            if self._db:
                setup.append(("SELECT", self._db))
            if setup:
                replies = await self._wait(protocol, protocol.send(_pack(setup), len(setup)))
                failed = next((r for r in replies if isinstance(r, Exception)), None)
                if failed is not None:
                    protocol.close(RedisConnectionError("setup refused"))
                    raise RedisConnectionError(f"the server refused the connection's setup ({failed})")
            self._slots[index] = protocol
            return protocol

    async def _wait(self, protocol: _Protocol, future: asyncio.Future[list[Any]]) -> list[Any]:
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self._timeout, _expire, protocol, future, self._timeout)
        try:
            return await future
        finally:
            timer.cancel()

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        """Send ``commands`` as one pipeline; their replies in order (a refused command's
        ``ResponseError`` in its place). Connection faults and timeouts raise."""
        self._turn = (self._turn + 1) % len(self._slots)
        protocol = self._slots[self._turn]
        if protocol is None or not protocol.usable:
            protocol = await self._open(self._turn)
        names = [_name(c) for c in commands]
        replies = await self._wait(protocol, protocol.send(_pack(commands), len(commands)))
        for index, name in enumerate(names):
            parse = PARSED.get(name)
            if parse is not None and not isinstance(replies[index], Exception):
                replies[index] = parse(replies[index])
        return replies

    async def close(self) -> None:
        for protocol in self._slots:
            if protocol is not None:
                protocol.close(RedisConnectionError("closed"))
        self._slots = [None] * len(self._slots)
        with contextlib.suppress(Exception):
            await asyncio.sleep(0)


def _expire(protocol: _Protocol, future: asyncio.Future[list[Any]], seconds: float) -> None:
    """A pipeline that took too long: the connection is out of step; close it (every
    pipeline waiting on it fails and is retried by its caller)."""
    if not future.done():
        protocol.close(RedisTimeoutError(f"no answer within {seconds}s"))


def _name(command: Command) -> str:
    name = command[0]
    return (name.decode() if isinstance(name, bytes) else str(name)).upper()


def _pack(commands: Sequence[Command]) -> bytes:
    return b"".join(hiredis.pack_command(tuple(c[:-1] if c and isinstance(c[-1], dict) else c)) for c in commands)
