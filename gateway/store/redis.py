"""Redis store: durable, shared by every gateway replica.

Each method is one round trip (a pipeline or a script), and every key it writes has
its lifetime set in the same round trip (see ``keys``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.errors import StoreUnavailable
from gateway.profiles import Interaction, OptOut, UserProfile
from gateway.store import codec, keys
from gateway.store.base import IdemKey, IdemResult, IdemState
from gateway.store.records import AuditEntry, KillSwitch, MessageRecord, TimelineEntry

# KEYS[1] idempotency key; ARGV[1] fingerprint. Deletes only our own pending claim.
_IDEM_ABORT = """
if redis.call('GET', KEYS[1]) == 'P' .. ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1] due zset; ARGV[1] now (epoch seconds); ARGV[2] limit.
_TAKE_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #ids > 0 then redis.call('ZREM', KEYS[1], unpack(ids)) end
return ids
"""

# KEYS[1] profile hash; ARGV[1] ttl ms; ARGV[2] 'set' | 'del'; ARGV[3] field; ARGV[4] value.
_OPT_OUT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[2] == 'set' then
  redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
else
  redis.call('HDEL', KEYS[1], ARGV[3])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS[1] profile hash, KEYS[2] interactions list; ARGV[1] entry, ARGV[2] keep,
# ARGV[3] retention ms.
_INTERACTION = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[2]) - 1)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""

_FINGERPRINT_LEN = 64


def _ms(delta: timedelta) -> int:
    return max(1, int(delta.total_seconds() * 1000))


def redacted(url: str) -> str:
    """The URL without its password, for logs and errors."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class RedisStore:
    kind = "redis"

    def __init__(self, url: str, *, timeout: float = 2.0) -> None:
        self._where = redacted(url)
        self._redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
        )
        self._idem_abort = self._redis.register_script(_IDEM_ABORT)
        self._take_due = self._redis.register_script(_TAKE_DUE)
        self._opt_out = self._redis.register_script(_OPT_OUT)
        self._interaction = self._redis.register_script(_INTERACTION)

    @property
    def client(self) -> aioredis.Redis:
        return self._redis

    @asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        try:
            yield
        except RedisError as exc:
            raise StoreUnavailable(
                f"state store {self._where} did not answer ({type(exc).__name__}); check that Redis is up and reachable"
            ) from exc
        except OSError as exc:
            raise StoreUnavailable(f"state store {self._where} is unreachable ({exc.strerror or exc})") from exc

    async def ping(self) -> None:
        async with self._guard():
            await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()

    # --- idempotency ---------------------------------------------------------------
    async def idem_begin(self, key: IdemKey, ttl: timedelta) -> IdemResult:
        async with self._guard():
            old = await self._redis.set(
                keys.idempotency(key.bu, key.request_id),
                b"P" + key.fingerprint.encode(),
                nx=True,
                px=_ms(ttl),
                get=True,
            )
        if old is None:
            return IdemResult(IdemState.NEW)
        assert isinstance(old, bytes)
        fingerprint = old[1 : 1 + _FINGERPRINT_LEN].decode()
        if fingerprint != key.fingerprint:
            return IdemResult(IdemState.CONFLICT)
        if old[:1] == b"P":
            return IdemResult(IdemState.PENDING)
        return IdemResult(IdemState.SAME, bytes(old[1 + _FINGERPRINT_LEN :]))

    async def idem_abort(self, key: IdemKey) -> None:
        async with self._guard():
            await self._idem_abort(keys=[keys.idempotency(key.bu, key.request_id)], args=[key.fingerprint])

    # --- messages ------------------------------------------------------------------
    async def save_decision(
        self,
        record: MessageRecord,
        idem: IdemKey | None,
        answer: bytes,
        idem_ttl: timedelta,
        retention: timedelta,
    ) -> None:
        # The message and its idempotency record live in different slots; a plain
        # pipeline sends both in one round trip.
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(keys.message(record.message_id), codec.encode_message(record), px=_ms(retention))
        if record.timeline:
            events_key = keys.message_events(record.message_id)
            pipe.rpush(events_key, *[codec.encode_event(e) for e in record.timeline])
            pipe.pexpire(events_key, _ms(retention))
        if idem is not None:
            pipe.set(
                keys.idempotency(idem.bu, idem.request_id),
                b"D" + idem.fingerprint.encode() + answer,
                px=_ms(idem_ttl),
            )
        async with self._guard():
            await pipe.execute()

    async def add_events(
        self, message_id: str, events: Sequence[TimelineEntry], status: str | None, retention: timedelta
    ) -> None:
        pipe = self._redis.pipeline(transaction=True)
        events_key = keys.message_events(message_id)
        if events:
            pipe.rpush(events_key, *[codec.encode_event(e) for e in events])
        if status:
            pipe.set(keys.message_status(message_id), status, px=_ms(retention))
        pipe.pexpire(events_key, _ms(retention))
        async with self._guard():
            await pipe.execute()

    async def get_message(self, message_id: str) -> MessageRecord | None:
        events_key = keys.message_events(message_id)
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(keys.message(message_id))
        pipe.lrange(events_key, 0, -1)
        pipe.get(keys.message_status(message_id))
        async with self._guard():
            raw, events, status = await pipe.execute()
        if raw is None:
            return None
        return codec.decode_message(raw, events, None if status is None else status.decode())

    # --- users ---------------------------------------------------------------------
    async def _read_profile(self, user_id: str) -> UserProfile | None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(keys.user_profile(user_id))
        pipe.lrange(keys.user_interactions(user_id), 0, -1)
        async with self._guard():
            fields, interactions = await pipe.execute()
        if not fields:
            return None
        return codec.decode_profile(user_id, fields, interactions)

    async def upsert_user(self, user_id: str, patch: Mapping[str, Any], now: datetime, ttl: timedelta) -> UserProfile:
        key = keys.user_profile(user_id)
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(key, mapping=codec.encode_patch(patch, now))  # type: ignore[arg-type]
        pipe.pexpire(key, _ms(ttl))
        pipe.hgetall(key)
        pipe.lrange(keys.user_interactions(user_id), 0, -1)
        async with self._guard():
            *_, fields, interactions = await pipe.execute()
        return codec.decode_profile(user_id, fields, interactions)

    async def get_user(self, user_id: str) -> UserProfile | None:
        return await self._read_profile(user_id)

    async def set_opt_out(self, user_id: str, entry: OptOut, opted_out: bool, ttl: timedelta) -> UserProfile | None:
        name, value = codec.encode_opt_out(entry)
        async with self._guard():
            found = await self._opt_out(
                keys=[keys.user_profile(user_id)],
                args=[_ms(ttl), "set" if opted_out else "del", name, value],
            )
        return await self._read_profile(user_id) if found else None

    async def record_interaction(
        self, user_id: str, interaction: Interaction, keep: int, retention: timedelta
    ) -> UserProfile | None:
        async with self._guard():
            found = await self._interaction(
                keys=[keys.user_profile(user_id), keys.user_interactions(user_id)],
                args=[codec.encode_interaction(interaction), keep, _ms(retention)],
            )
        return await self._read_profile(user_id) if found else None

    # --- kill switches -------------------------------------------------------------
    async def put_kill_switch(self, switch: KillSwitch, audit: AuditEntry) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(keys.KILL_SWITCHES, switch.switch_id, codec.encode_switch(switch))
        pipe.lpush(keys.KILL_AUDIT, codec.encode_audit(audit))
        pipe.ltrim(keys.KILL_AUDIT, 0, keys.KILL_AUDIT_KEEP - 1)
        async with self._guard():
            await pipe.execute()

    async def clear_kill_switch(
        self, switch_id: str, audit_of: Callable[[KillSwitch], AuditEntry]
    ) -> KillSwitch | None:
        async with self._guard():
            raw = await self._redis.hget(keys.KILL_SWITCHES, switch_id)
            if raw is None:
                return None
            switch = codec.decode_switch(raw)
            pipe = self._redis.pipeline(transaction=True)
            pipe.hdel(keys.KILL_SWITCHES, switch_id)
            pipe.lpush(keys.KILL_AUDIT, codec.encode_audit(audit_of(switch)))
            pipe.ltrim(keys.KILL_AUDIT, 0, keys.KILL_AUDIT_KEEP - 1)
            removed, *_ = await pipe.execute()
        return switch if removed else None

    async def kill_switches(self) -> list[KillSwitch]:
        async with self._guard():
            raw = await self._redis.hvals(keys.KILL_SWITCHES)
        return [codec.decode_switch(item) for item in raw]

    async def kill_audit(self, limit: int) -> list[AuditEntry]:
        async with self._guard():
            raw = await self._redis.lrange(keys.KILL_AUDIT, 0, limit - 1)
        return [codec.decode_audit(item) for item in raw]

    # --- scheduled claims ----------------------------------------------------------
    async def schedule(self, message_id: str, at: datetime) -> None:
        async with self._guard():
            await self._redis.zadd(keys.DUE, {message_id: at.timestamp()})

    async def take_due(self, now: datetime, limit: int) -> list[str]:
        async with self._guard():
            ids = await self._take_due(keys=[keys.DUE], args=[now.timestamp(), limit])
        return [i.decode() for i in ids]

    async def scheduled_count(self) -> int:
        async with self._guard():
            return int(await self._redis.zcard(keys.DUE))
