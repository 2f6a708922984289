"""Redis store: durable, shared by every gateway replica.

Each method is one round trip (a pipeline or a script), and every key it writes has
its lifetime set in the same round trip (see ``keys``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.core.state import Commit, Held, Hold, MarkDedup, Mutation, Release, Reserve, Unhold, UserState
from gateway.errors import StoreUnavailable
from gateway.logs import get_logger
from gateway.profiles import Interaction, OptOut, UserProfile
from gateway.store import codec, keys
from gateway.store.base import IdemKey, IdemResult, IdemState
from gateway.store.records import AuditEntry, Final, KillSwitch, MessageRecord, TimelineEntry

log = get_logger(__name__)

# KEYS[1] idempotency key; ARGV[1] fingerprint. Deletes only our own pending claim.
_IDEM_ABORT = """
if redis.call('GET', KEYS[1]) == 'P' .. ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS[1] due zset; ARGV[1] now ms; ARGV[2] limit; ARGV[3] lease end ms. Taking a user
# moves its score to the lease end, so nobody else takes it meanwhile.
_TAKE_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[3], id) end
return ids
"""

# KEYS[1] due zset; ARGV[1] user; ARGV[2] lease end ms; ARGV[3] next due ms or ''.
_FINISH_DUE = """
local cur = redis.call('ZSCORE', KEYS[1], ARGV[1])
if cur and tonumber(cur) == tonumber(ARGV[2]) then
  if ARGV[3] == '' then redis.call('ZREM', KEYS[1], ARGV[1]) else redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1]) end
elseif ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[1], 'LT', ARGV[3], ARGV[1])
end
return 1
"""

# A decision's mutations, applied only at the expected version (one user's slot).
# KEYS: 1 version, 2 sent, 3 sentinfo, 4 held, 5.. dedup keys.
# ARGV: 1 expected version or '', 2 retention ms, 3 now (s), 4 ops (JSON).
_APPLY = """
local version = tonumber(redis.call('GET', KEYS[1]) or '0')
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= version then return -1 end
for _, op in ipairs(cjson.decode(ARGV[4])) do
  local kind = op[1]
  if kind == 'reserve' then
    redis.call('ZADD', KEYS[2], op[3], op[2]); redis.call('HSET', KEYS[3], op[2], op[4])
  elseif kind == 'release' then
    redis.call('ZREM', KEYS[2], op[2]); redis.call('HDEL', KEYS[3], op[2])
  elseif kind == 'commit' then
    local info = redis.call('HGET', KEYS[3], op[2])
    if info then
      local category, _, bu = string.match(info, '^([^|]*)|([^|]*)|([^|]*)|')
      redis.call('HSET', KEYS[3], op[2], category .. '|' .. op[3] .. '|' .. bu .. '|1')
    end
  elseif kind == 'dedup' then
    redis.call('SET', KEYS[4 + op[2]], '1', 'PX', op[3])
  elseif kind == 'hold' then
    redis.call('ZADD', KEYS[4], op[3], op[2])
  elseif kind == 'unhold' then
    redis.call('ZREM', KEYS[4], op[2])
  end
end
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. (tonumber(ARGV[3]) - tonumber(ARGV[2]) / 1000))
if #old > 0 then redis.call('ZREM', KEYS[2], unpack(old)); redis.call('HDEL', KEYS[3], unpack(old)) end
for i = 2, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
redis.call('SET', KEYS[1], version + 1, 'PX', ARGV[2])
return version + 1
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


# KEYS[1] lock or value; ARGV[1] the value it must still hold. Compare and delete.
_DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS[1] bucket hash; ARGV: 1 rate a second, 2 burst, 3 now ms. Returns 0 when a token
# was taken, else the milliseconds until one is there.
_TAKE_TOKEN = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens = tonumber(state[1]) or burst
local last = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - last) * rate / 1000)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) * 1000 / rate) end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.max(1000, math.ceil(2000 * burst / rate)))
return wait
"""


# KEYS[1] outcome list; ARGV: 1 '1' bad or '0', 2 window size, 3 ttl ms. Returns the
# window's size and how many bad.
_OUTCOME = """
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local items = redis.call('LRANGE', KEYS[1], 0, -1)
local bad = 0
for _, v in ipairs(items) do if v == '1' then bad = bad + 1 end end
return {#items, bad}
"""


class RedisStore:
    kind = "redis"

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 2.0,
        max_connections: int = 128,
        on_round_trip: Callable[[str], None] | None = None,
    ) -> None:
        self._where = redacted(url)
        self._on_round_trip = on_round_trip or (lambda op: None)
        # A bounded pool that makes callers wait for a connection: thousands of
        # deliveries in flight must not open thousands of connections.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            # Waiting for a free connection under load is not an outage.
            timeout=max(10.0, timeout * 5),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
        )
        self._redis = aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes it
        self._idem_abort = self._redis.register_script(_IDEM_ABORT)
        self._take_due = self._redis.register_script(_TAKE_DUE)
        self._finish_due = self._redis.register_script(_FINISH_DUE)
        self._apply = self._redis.register_script(_APPLY)
        self._opt_out = self._redis.register_script(_OPT_OUT)
        self._interaction = self._redis.register_script(_INTERACTION)
        self._delete_if = self._redis.register_script(_DELETE_IF)
        self._take_token = self._redis.register_script(_TAKE_TOKEN)
        self._outcome = self._redis.register_script(_OUTCOME)

    @property
    def client(self) -> aioredis.Redis:
        return self._redis

    @asynccontextmanager
    async def _guard(self, op: str) -> AsyncIterator[None]:
        """One round trip to Redis: counted by operation, errors made StoreUnavailable."""
        self._on_round_trip(op)
        try:
            yield
        except RedisError as exc:
            raise StoreUnavailable(
                f"state store {self._where} did not answer ({type(exc).__name__}); check that Redis is up and reachable"
            ) from exc
        except OSError as exc:
            raise StoreUnavailable(f"state store {self._where} is unreachable ({exc.strerror or exc})") from exc

    async def ping(self) -> None:
        async with self._guard("ping"):
            await self._redis.ping()

    async def close(self) -> None:
        await self._redis.aclose()

    # --- idempotency ---------------------------------------------------------------
    async def idem_begin(self, key: IdemKey, ttl: timedelta) -> IdemResult:
        async with self._guard("idem_begin"):
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
        async with self._guard("idem_abort"):
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
        async with self._guard("save_decision"):
            await execute(pipe)

    async def add_events(
        self,
        message_id: str,
        events: Sequence[TimelineEntry],
        status: str | None,
        retention: timedelta,
        final: Final | None = None,
    ) -> None:
        pipe = self._redis.pipeline(transaction=True)
        events_key = keys.message_events(message_id)
        if events:
            pipe.rpush(events_key, *[codec.encode_event(e) for e in events])
        if status:
            pipe.set(keys.message_status(message_id), status, px=_ms(retention))
        if final is not None:
            pipe.set(keys.message_final(message_id), codec.encode_final(final), px=_ms(retention))
        pipe.pexpire(events_key, _ms(retention))
        async with self._guard("add_events"):
            await execute(pipe)

    async def get_message(self, message_id: str) -> MessageRecord | None:
        found = await self.get_messages([message_id])
        return found[0]

    # --- users ---------------------------------------------------------------------
    async def _read_profile(self, user_id: str) -> UserProfile | None:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(keys.user_profile(user_id))
        pipe.lrange(keys.user_interactions(user_id), 0, -1)
        async with self._guard("read_profile"):
            fields, interactions = await execute(pipe)
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
        async with self._guard("upsert_user"):
            *_, fields, interactions = await execute(pipe)
        return codec.decode_profile(user_id, fields, interactions)

    async def get_user(self, user_id: str) -> UserProfile | None:
        return await self._read_profile(user_id)

    async def set_opt_out(self, user_id: str, entry: OptOut, opted_out: bool, ttl: timedelta) -> UserProfile | None:
        name, value = codec.encode_opt_out(entry)
        async with self._guard("set_opt_out"):
            found = await self._opt_out(
                keys=[keys.user_profile(user_id)],
                args=[_ms(ttl), "set" if opted_out else "del", name, value],
            )
        return await self._read_profile(user_id) if found else None

    async def record_interaction(
        self, user_id: str, interaction: Interaction, keep: int, retention: timedelta
    ) -> UserProfile | None:
        async with self._guard("record_interaction"):
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
        pipe.publish(keys.KILL_CHANGED, switch.switch_id)
        async with self._guard("put_kill_switch"):
            await execute(pipe)

    async def clear_kill_switch(
        self, switch_id: str, audit_of: Callable[[KillSwitch], AuditEntry]
    ) -> KillSwitch | None:
        async with self._guard("clear_kill_switch"):
            raw = await self._redis.hget(keys.KILL_SWITCHES, switch_id)
            if raw is None:
                return None
            switch = codec.decode_switch(raw)
            pipe = self._redis.pipeline(transaction=True)
            pipe.hdel(keys.KILL_SWITCHES, switch_id)
            pipe.lpush(keys.KILL_AUDIT, codec.encode_audit(audit_of(switch)))
            pipe.ltrim(keys.KILL_AUDIT, 0, keys.KILL_AUDIT_KEEP - 1)
            pipe.publish(keys.KILL_CHANGED, switch_id)
            removed, *_ = await execute(pipe)
        return switch if removed else None

    async def watch_kill_switches(self, on_change: Callable[[], Awaitable[None]], stopping: asyncio.Event) -> None:
        """Call ``on_change`` whenever any replica changes a switch (pub/sub). Polling
        stays as the fallback: a lost connection only makes this wait and retry."""
        while not stopping.is_set():
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(keys.KILL_CHANGED)
                while not stopping.is_set():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                    if message is not None:
                        await on_change()
            except (RedisError, OSError, StoreUnavailable) as exc:
                log.warning("kill_switch_feed_lost", error=type(exc).__name__, detail="polling continues")
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def kill_switches(self) -> list[KillSwitch]:
        async with self._guard("kill_switches"):
            raw = await self._redis.hvals(keys.KILL_SWITCHES)
        return [codec.decode_switch(item) for item in raw]

    async def kill_audit(self, limit: int) -> list[AuditEntry]:
        async with self._guard("kill_audit"):
            raw = await self._redis.lrange(keys.KILL_AUDIT, 0, limit - 1)
        return [codec.decode_audit(item) for item in raw]

    async def get_messages(self, message_ids: Sequence[str]) -> list[MessageRecord | None]:
        if not message_ids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for message_id in message_ids:
            pipe.get(keys.message(message_id))
            pipe.lrange(keys.message_events(message_id), 0, -1)
            pipe.get(keys.message_status(message_id))
            pipe.get(keys.message_final(message_id))
        async with self._guard("get_messages"):
            raw = await execute(pipe)
        out: list[MessageRecord | None] = []
        for index in range(len(message_ids)):
            body, events, status, final = raw[4 * index : 4 * index + 4]
            decoded = None if status is None else codec.text(status)
            out.append(None if body is None else codec.decode_message(body, events, decoded, final))
        return out

    # --- arbitration state ---------------------------------------------------------
    async def load_user(
        self, user_id: str, dedup: tuple[str, str] | None, since: datetime
    ) -> tuple[UserProfile | None, UserState]:
        pipe = self._redis.pipeline(transaction=False)
        pipe.hgetall(keys.user_profile(user_id))
        pipe.lrange(keys.user_interactions(user_id), 0, -1)
        pipe.get(keys.user_version(user_id))
        pipe.zrangebyscore(keys.user_sent(user_id), since.timestamp(), "+inf", withscores=True)
        pipe.hgetall(keys.user_sent_info(user_id))
        pipe.zrange(keys.user_held(user_id), 0, -1, withscores=True)
        if dedup is not None:
            pipe.exists(keys.user_dedup(user_id, *dedup))
        async with self._guard("load_user"):
            fields, interactions, version, sent, info, held, *seen = await execute(pipe)
        profile = codec.decode_profile(user_id, fields, interactions) if fields else None
        state = UserState(
            version=int(version or 0),
            sent=tuple(codec.decode_sent(m, score, info[m]) for m, score in sent if m in info),
            held=tuple(Held(m.decode(), datetime.fromtimestamp(score / 1000, UTC)) for m, score in held),
            dedup_seen=bool(seen and seen[0]),
        )
        return profile, state

    async def apply(
        self,
        user_id: str,
        expected_version: int | None,
        mutations: Sequence[Mutation],
        now: datetime,
        retention: timedelta,
    ) -> bool:
        dedup_keys: list[str] = []
        ops: list[list[object]] = []
        first_hold: int | None = None
        for change in mutations:
            if isinstance(change, Reserve):
                e = change.entry
                info = codec.encode_sent_info(e.category, e.channel, e.bu, e.committed)
                ops.append(["reserve", e.message_id, e.at.timestamp(), info])
            elif isinstance(change, Release):
                ops.append(["release", change.message_id])
            elif isinstance(change, Commit):
                ops.append(["commit", change.message_id, str(change.channel)])
            elif isinstance(change, MarkDedup):
                dedup_keys.append(keys.user_dedup(user_id, change.bu, change.key))
                ops.append(["dedup", len(dedup_keys), _ms(change.ttl)])
            elif isinstance(change, Hold):
                ops.append(["hold", change.message_id, _epoch_ms(change.due)])
                first_hold = min(first_hold or _epoch_ms(change.due), _epoch_ms(change.due))
            elif isinstance(change, Unhold):
                ops.append(["unhold", change.message_id])
        pipe = self._redis.pipeline(transaction=False)
        await self._apply(
            keys=[
                keys.user_version(user_id),
                keys.user_sent(user_id),
                keys.user_sent_info(user_id),
                keys.user_held(user_id),
                *dedup_keys,
            ],
            args=[
                "" if expected_version is None else expected_version,
                _ms(retention),
                now.timestamp(),
                orjson.dumps(ops),
            ],
            client=pipe,
        )
        if first_hold is not None:
            pipe.zadd(keys.DUE, {user_id: first_hold}, lt=True)
        async with self._guard("apply"):
            result, *_ = await execute(pipe)
        return int(result) >= 0

    # --- due index -----------------------------------------------------------------
    async def take_due(self, now: datetime, limit: int, lease: timedelta) -> list[tuple[str, datetime]]:
        until = now + lease
        async with self._guard("take_due"):
            ids = await self._take_due(keys=[keys.DUE], args=[_epoch_ms(now), limit, _epoch_ms(until)])
        return [(i.decode(), until) for i in ids]

    async def finish_due(self, user_id: str, leased_until: datetime, next_due: datetime | None) -> None:
        async with self._guard("finish_due"):
            await self._finish_due(
                keys=[keys.DUE],
                args=[user_id, _epoch_ms(leased_until), "" if next_due is None else _epoch_ms(next_due)],
            )

    async def due_count(self) -> int:
        async with self._guard("due_count"):
            return int(await self._redis.zcard(keys.DUE))

    # --- shared small state ----------------------------------------------------------
    async def shared_get(self, name: str) -> str | None:
        async with self._guard("shared_get"):
            raw = await self._redis.get(keys.shared(name))
        return None if raw is None else codec.text(raw)

    async def shared_put(self, name: str, value: str, ttl: timedelta, *, only_if_absent: bool = False) -> bool:
        async with self._guard("shared_put"):
            done = await self._redis.set(
                keys.shared(name), value, px=max(1, int(ttl.total_seconds() * 1000)), nx=only_if_absent
            )
        return bool(done)

    async def shared_delete(self, name: str, only_if: str | None = None) -> bool:
        async with self._guard("shared_delete"):
            if only_if is None:
                return bool(await self._redis.delete(keys.shared(name)))
            return bool(await self._delete_if(keys=[keys.shared(name)], args=[only_if]))

    async def take_token(self, bucket: str, rate: float, burst: int, now: datetime) -> float:
        async with self._guard("take_token"):
            wait_ms = await self._take_token(keys=[keys.bucket(bucket)], args=[rate, burst, _epoch_ms(now)])
        return int(wait_ms) / 1000

    async def record_outcome(self, key: str, bad: bool, last: int, ttl: timedelta) -> tuple[int, int]:
        async with self._guard("record_outcome"):
            total, bad_count = await self._outcome(
                keys=[keys.outcomes(key)], args=["1" if bad else "0", last, int(ttl.total_seconds() * 1000)]
            )
        return int(total), int(bad_count)


async def execute(pipe: Any) -> list[Any]:
    """Run a pipeline; on a fault give its connection back instead of leaking it."""
    try:
        result: list[Any] = await pipe.execute()
        return result
    finally:
        await pipe.reset()


def _epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)
