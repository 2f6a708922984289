"""The Redis store: durable, shared by every gateway replica; one node or a cluster.

Every method is one round trip (one pipeline, shared with the other calls of the same
turn of the event loop), and every key it writes has its lifetime set in the same step
(see ``keys``). A decision's commit is one script on the user's shard: the state (only
at the version that was read), the message, the idempotent answer and the delivery job
land together or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import msgspec

from gateway.errors import FailedPrecondition
from gateway.logs import get_logger
from gateway.loops import StepFailures
from gateway.store import codec, keys
from gateway.store.base import (
    Change,
    Committed,
    Erasure,
    IdemKey,
    IdemState,
    IndexCursor,
    Lifetimes,
    UserRead,
    UserView,
    erasable_messages,
    message_links,
)
from gateway.store.redis import scripts
from gateway.store.redis.connection import Command, Connection, Wait
from gateway.store.shards import DEFAULT_SHARDS, message_shard, shard_of, tags
from gateway.values.campaigns import CAMPAIGN_RETENTION, Campaign, ShardProgress
from gateway.values.decisions import PushAnswer
from gateway.values.jobs import Job
from gateway.values.profiles import Interaction, OptOut, UserProfile
from gateway.values.records import AuditEntry, Current, KillSwitch, MessageRecord, TimelineEntry

log = get_logger(__name__)


def _trim_turn(message_id: str) -> bool:
    """One commit in 16 cuts its user's message index to length (spread by message id)."""
    return zlib.crc32(message_id.encode()) % 16 == 0


def _answered(stored: bytes | None, idem: IdemKey) -> tuple[IdemState, PushAnswer | None]:
    """What a stored answer (or none) says of a request with ``idem``'s body."""
    if stored is None:
        return IdemState.NEW, None
    kept = codec.ANSWER.decode(stored)
    if kept.fingerprint != idem.fingerprint:
        return IdemState.CONFLICT, None
    return IdemState.SAME, kept.answer


@lru_cache(maxsize=256)  # a policy's few lifetimes, three times in each user's commit
def ms(delta: timedelta) -> int:
    return max(1, int(delta.total_seconds() * 1000))


def shared_set(name: str, value: str, ttl: timedelta, *, only_if_absent: bool = False) -> Command:
    """The SET of a shared name (``shared_put``; a settlement's ``remember``)."""
    return ("SET", keys.shared(name), value, "PX", ms(ttl), *(("NX",) if only_if_absent else ()))


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class RedisStore:
    kind = "redis"

    def __init__(
        self,
        url: str,
        *,
        cluster: bool = False,
        shards: int = DEFAULT_SHARDS,
        timeout: float = 2.0,
        max_connections: int = 128,
        on_round_trip: Callable[[str], None] | None = None,
        wait: Wait | None = None,
        on_wait_short: Callable[[int], None] = lambda short: None,
    ) -> None:
        self.shards = shards
        self.tags = tags(shards)
        self.connection = Connection(
            url,
            cluster=cluster,
            timeout=timeout,
            max_connections=max_connections,
            scripts=scripts.ALL,
            on_round_trip=on_round_trip or (lambda op: None),
            wait=wait,
            on_wait_short=on_wait_short,
        )
        self.where = self.connection.where
        self._run = self.connection.run

    @property
    def client(self) -> Any:
        return self.connection.client

    def tag_of(self, user_id: str) -> str:
        return self.tags[shard_of(user_id, self.shards)]

    async def ping(self) -> None:
        await self.connection.direct("ping", ("PING",))

    async def prepare(self) -> None:
        """Load the scripts; check (or record, on an empty store) the shard count."""
        await self.connection.load_scripts()
        await self._run("prepare", [("HSETNX", keys.META, "shards", self.shards)])
        [stored] = await self._run("prepare", [("HGET", keys.META, "shards")])
        if int(stored) != self.shards:
            raise FailedPrecondition(
                f"the store {self.where} was laid out in {int(stored)} shards, and this gateway is set to "
                f"{self.shards}: the data would be out of reach. Set HERALD_REDIS_SHARDS={int(stored)} "
                "(or start on an empty store)"
            )

    async def close(self) -> None:
        await self.connection.close()

    # --- decisions -----------------------------------------------------------------
    async def read_users(self, reads: Sequence[UserRead], idem_ttl: timedelta) -> list[UserView]:
        """A read recording its request id in the unit-wide index learns from the index
        whether the id was seen: only when it was is the stored answer read (a second
        round trip, for retries and reuses alone). A read that skips the index reads the
        answer at once."""
        commands: list[Command] = []
        for read in reads:
            tag = self.tag_of(read.user_id)
            commands.append(("HGETALL", keys.user(tag, read.user_id)))
            if read.idem is not None:
                idem = read.idem
                if read.index:
                    index = keys.request_index(idem.bu, idem.request_id)
                    # {"get": True}: the reply is the old value (redis-py's parser needs telling).
                    commands.append(("SET", index, idem.fingerprint, "NX", "GET", "PX", ms(idem_ttl), {"get": True}))
                else:
                    commands.append(("GET", keys.idempotency(tag, idem.bu, idem.request_id)))
        replies = iter(await self._run("read_users", commands))
        out: list[UserView] = []
        # Reads the index had the request id for: (position, key, the answer's GET, and
        # what no stored answer means: NEW when the index had this body, CONFLICT when
        # another; a stored answer with this body is the answer either way, as when the
        # index entry ran out and another body took it before a retry).
        seen: list[tuple[int, IdemKey, Command, IdemState]] = []
        for read in reads:
            profile, state = codec.decode_user(read.user_id, next(replies) or {})
            status, answer = IdemState.NEW, None
            if read.idem is not None:
                idem, got = read.idem, next(replies)
                if not read.index:
                    status, answer = _answered(got, idem)
                elif got is not None:
                    where = keys.idempotency(self.tag_of(read.user_id), idem.bu, idem.request_id)
                    same = codec.text(got) == idem.fingerprint
                    seen.append((len(out), idem, ("GET", where), IdemState.NEW if same else IdemState.CONFLICT))
            out.append(UserView(read.user_id, profile, state, status, answer))
        if seen:
            stored = await self._run("read_users", [command for _, _, command, _ in seen])
            for (at, idem, _, unanswered), got in zip(seen, stored, strict=True):
                status, answer = _answered(got, idem)
                if status is IdemState.NEW:
                    status = unanswered
                out[at] = msgspec.structs.replace(out[at], idem=status, answer=answer)
        return out

    def _commit_command(self, change: Change, lifetimes: Lifetimes) -> Command:
        tag = self.tag_of(change.user_id)
        user = keys.user(tag, change.user_id)
        command_keys: list[str] = [user, keys.due(tag), keys.user_messages(tag, change.user_id)]
        newest = max((epoch_ms(new.record.created_at) for new in change.new), default=None)
        args: list[Any] = [
            "" if change.state is None else change.version,
            b"" if change.state is None else codec.encode_state(change.state),
            "" if change.due is None else epoch_ms(change.due),
            ms(lifetimes.idempotency),
            ms(lifetimes.messages),
            len(change.new),
            len(change.updates),
            change.user_id,
            keys.USER_MESSAGES_KEEP if any(_trim_turn(n.record.message_id) for n in change.new) else "",
            "" if newest is None else newest - ms(lifetimes.messages),
        ]
        for new in change.new:
            record = new.record
            answer_key = user
            answer = b""
            if new.idem is not None and new.answer is not None:
                answer_key = keys.idempotency(tag, new.idem.bu, new.idem.request_id)
                answer = codec.ANSWER.encode(codec.StoredAnswer(new.idem.fingerprint, new.answer))
            command_keys += [keys.message(tag, record.message_id), answer_key, self._stream_for(tag, new.job)]
            args += [
                codec.MESSAGE.encode(record),
                answer,
                b"" if new.job is None else codec.JOB.encode(new.job),
                epoch_ms(record.created_at),
                record.message_id,
            ]
        for update in change.updates:
            command_keys += [
                keys.message_events(tag, update.message_id),
                keys.message_current(tag, update.message_id),
                self._stream_for(tag, update.job),
            ]
            args += [
                codec.encode_events(update.events),
                b"" if update.current is None else codec.CURRENT.encode(update.current),
                b"" if update.job is None else codec.JOB.encode(update.job),
            ]
        if change.funnel:
            args.append(ms(CAMPAIGN_RETENTION))
            for campaign_id, field in change.funnel:
                command_keys.append(keys.funnel(tag, campaign_id))
                args.append(field)
        return scripts.COMMIT.call(command_keys, args)

    @staticmethod
    def _stream_for(tag: str, job: Job | None) -> str:
        # A slot that is not used still needs a key of the shard's slot.
        return keys.stream(tag, job.lane) if job is not None else keys.due(tag)

    async def commit(self, changes: Sequence[Change], lifetimes: Lifetimes) -> list[Committed]:
        replies = await self._run("commit", [self._commit_command(c, lifetimes) for c in changes], durable=True)
        return [Committed(codec.text(r)) for r in replies]

    # --- messages ------------------------------------------------------------------
    def _message_tag(self, message_id: str) -> str | None:
        shard = message_shard(message_id, self.shards)
        return None if shard is None else self.tags[shard]

    async def get_messages(self, message_ids: Sequence[str]) -> list[MessageRecord | None]:
        commands: list[Command] = []
        found = []
        for message_id in message_ids:
            tag = self._message_tag(message_id)
            found.append(tag is not None)
            if tag is not None:
                commands += [
                    ("GET", keys.message(tag, message_id)),
                    ("GET", keys.message_events(tag, message_id)),
                    ("GET", keys.message_current(tag, message_id)),
                ]
        replies = iter(await self._run("get_messages", commands))
        out: list[MessageRecord | None] = []
        for known in found:
            if not known:
                out.append(None)
                continue
            raw, events, current = next(replies), next(replies), next(replies)
            out.append(None if raw is None else codec.decode_message(raw, events, current))
        return out

    async def add_events(
        self, message_id: str, events: Sequence[TimelineEntry], current: Current | None, retention: timedelta
    ) -> bool:
        tag = self._message_tag(message_id)
        if tag is None:
            return False
        call = scripts.ADD_EVENTS.call(
            [
                keys.message(tag, message_id),
                keys.message_events(tag, message_id),
                keys.message_current(tag, message_id),
            ],
            [
                codec.encode_events(events),
                b"" if current is None else codec.CURRENT.encode(current),
                ms(retention),
            ],
        )
        [found] = await self._run("add_events", [call])
        return bool(found)

    async def user_messages(
        self, user_id: str, cursor: IndexCursor, since: datetime | None, count: int
    ) -> list[tuple[str, int]]:
        top = "+inf" if cursor.at_ms is None else cursor.at_ms
        bottom = "-inf" if since is None else epoch_ms(since)
        key = keys.user_messages(self.tag_of(user_id), user_id)
        # The index is cut to its length only now and then: a read never goes past it.
        keep = keys.USER_MESSAGES_KEEP
        [floor, reply] = await self._run(
            "user_messages",
            [
                ("ZREVRANGE", key, keep, -1, "WITHSCORES"),
                ("ZREVRANGEBYSCORE", key, top, bottom, "WITHSCORES", "LIMIT", cursor.skip, count),
            ],
        )
        beyond = {codec.text(member) for member, _ in _pairs(floor)}
        return [(codec.text(m), int(float(s))) for m, s in _pairs(reply) if codec.text(m) not in beyond]

    # --- profiles ------------------------------------------------------------------
    async def _profile(
        self, op: str, user_id: str, before: Sequence[Command] = ()
    ) -> tuple[list[Any], UserProfile | None]:
        key = keys.user(self.tag_of(user_id), user_id)
        *replies, fields = await self._run(op, [*before, ("HGETALL", key)])
        return replies, codec.decode_profile(user_id, fields or {})

    async def upsert_user(self, user_id: str, patch: Mapping[str, Any], now: datetime, ttl: timedelta) -> UserProfile:
        tag = self.tag_of(user_id)
        key = keys.user(tag, user_id)
        fields = codec.encode_patch(patch, now)
        flat = [item for pair in fields.items() for item in pair]
        # The audience indexes: every user, and each of their tags (a tag taken away
        # stays indexed until a scan finds the profile without it).
        index: list[Command] = [("SADD", keys.members(tag), user_id)]
        index += [("SADD", keys.labelled(tag, label), user_id) for label in patch.get("tags") or ()]
        _, profile = await self._profile(
            "upsert_user", user_id, [("HSET", key, *flat), ("PEXPIRE", key, ms(ttl)), *index]
        )
        assert profile is not None
        return profile

    async def replace_tags(
        self, user_id: str, expected: tuple[str, ...], tags: tuple[str, ...], now: datetime, ttl: timedelta
    ) -> tuple[bool, UserProfile | None]:
        tag = self.tag_of(user_id)
        fields = codec.encode_patch({"tags": tags}, now)
        added = sorted(set(tags) - set(expected))
        call = scripts.REPLACE_TAGS.call(
            [keys.user(tag, user_id), keys.members(tag), *(keys.labelled(tag, label) for label in added)],
            [
                codec.CODECS["tags"].encode(expected),
                fields[b"tags"],
                fields[codec.UPDATED_AT.encode()],
                ms(ttl),
                user_id,
            ],
        )
        [result], profile = await self._profile("replace_tags", user_id, [call])
        return int(result) == 1, profile

    def _index_key(self, shard: int, label: str | None) -> str:
        tag = self.tags[shard]
        return keys.members(tag) if label is None else keys.labelled(tag, label)

    async def delete_user(self, user_id: str) -> Erasure:
        tag = self.tag_of(user_id)
        user, index = keys.user(tag, user_id), keys.user_messages(tag, user_id)
        fields, indexed = await self._run("delete_user", [("HGETALL", user), ("ZRANGE", index, 0, -1)])
        profile, state = codec.decode_user(user_id, fields or {})
        wanted = erasable_messages([codec.text(i) for i in indexed], state)
        ids = [m for m in wanted if self._message_tag(m) == tag]  # the user's shard's, as all of them are
        records = [r for r in await self.get_messages(ids) if r is not None]
        labels = profile.tags if profile is not None else ()
        commands: list[Command] = [
            ("DEL", user),
            ("SREM", keys.members(tag), user_id),
            *(("SREM", keys.labelled(tag, label), user_id) for label in labels),
            ("ZREM", keys.due(tag), user_id),
            ("DEL", index),
            *(("DEL", keys.message(tag, m)) for m in ids),
        ]
        others: list[Command] = [
            ("DEL", k) for m in ids for k in (keys.message_events(tag, m), keys.message_current(tag, m))
        ]
        answers: list[Command] = []
        links: list[Command] = []
        for record in records:
            answers += [
                ("DEL", keys.idempotency(tag, record.business_unit, record.request_id)),
                ("DEL", keys.idempotency(tag, "spool", record.message_id)),  # a fail-open decision's hand-over
                ("DEL", keys.request_index(record.business_unit, record.request_id)),
            ]
            for name, value in message_links(record):
                links.append(
                    ("DEL", keys.shared(name))
                    if value is None
                    else scripts.DELETE_IF.call([keys.shared(name)], [value])
                )
        openid: list[Command] = []
        if profile is not None and profile.wechat is not None and profile.wechat.openid:
            openid.append(scripts.DELETE_IF.call([keys.shared(keys.openid_index(profile.wechat.openid))], [user_id]))
        replies = [int(r) for r in await self._run("delete_user", [*commands, *others, *answers, *links, *openid])]
        got = iter(replies)

        def take(count: int) -> int:
            return sum(next(got) for _ in range(count))

        erased = Erasure(
            profile=take(1),
            audience_indexes=take(1 + len(labels)),
            due_index=take(1),
            message_index=take(1),
            messages=take(len(ids)),
        )
        take(len(others))
        return msgspec.structs.replace(
            erased, answers=take(len(answers)), message_links=take(len(links)), openid_index=take(len(openid))
        )

    async def scan_users(self, shard: int, cursor: str, count: int, label: str | None = None) -> tuple[str, list[str]]:
        [(after, found)] = await self._run(
            "scan_users", [("SSCAN", self._index_key(shard, label), cursor, "COUNT", count)]
        )
        return str(after), [codec.text(u) for u in found]

    async def forget_users(self, shard: int, user_ids: Sequence[str], label: str | None = None) -> None:
        if user_ids:
            await self._run("forget_users", [("SREM", self._index_key(shard, label), *user_ids)])

    async def index_size(self, label: str | None = None) -> int:
        sizes = await self._run("index_size", [("SCARD", self._index_key(s, label)) for s in range(self.shards)])
        return sum(int(size) for size in sizes)

    async def get_user(self, user_id: str) -> UserProfile | None:
        _, profile = await self._profile("get_user", user_id)
        return profile

    async def set_opt_out(self, user_id: str, entry: OptOut, opted_out: bool, ttl: timedelta) -> UserProfile | None:
        name, value = codec.encode_opt_out(entry)
        key = keys.user(self.tag_of(user_id), user_id)
        call = scripts.OPT_OUT.call([key], [ms(ttl), "set" if opted_out else "del", name, value])
        [found], profile = await self._profile("set_opt_out", user_id, [call])
        return profile if found else None

    async def record_interaction(
        self, user_id: str, interaction: Interaction, keep: int, retention: timedelta
    ) -> UserProfile | None:
        key = keys.user(self.tag_of(user_id), user_id)
        call = scripts.INTERACTION.call([key], [codec.INTERACTION.encode(interaction), keep])
        [found], profile = await self._profile("record_interaction", user_id, [call])
        return profile if found else None

    # --- campaigns -----------------------------------------------------------------
    async def put_campaign(self, campaign: Campaign, expect: int | None) -> Campaign | None:
        stored = msgspec.structs.replace(campaign, version=0 if expect is None else expect + 1)
        keep = ms(CAMPAIGN_RETENTION)
        call = scripts.PUT_CAMPAIGN.call(
            [keys.campaign(campaign.campaign_id), keys.campaigns_of(campaign.bu), keys.CAMPAIGNS_RUNNING],
            [
                "" if expect is None else expect,
                codec.CAMPAIGN.encode(stored),
                keep,
                epoch_ms(campaign.created_at),
                campaign.campaign_id,
                "1" if stored.active else "0",
                epoch_ms(campaign.updated_at) - keep,
            ],
        )
        [written] = await self._run("put_campaign", [call])
        return stored if int(written) else None

    async def get_campaigns(self, campaign_ids: Sequence[str]) -> list[Campaign | None]:
        if not campaign_ids:
            return []
        raws = await self._run("get_campaigns", [("HGET", keys.campaign(c), "c") for c in campaign_ids])
        return [None if raw is None else codec.CAMPAIGN.decode(raw) for raw in raws]

    async def list_campaigns(self, bu: str, limit: int) -> list[Campaign]:
        [ids] = await self._run("list_campaigns", [("ZREVRANGE", keys.campaigns_of(bu), 0, limit - 1)])
        found = await self.get_campaigns([codec.text(i) for i in ids])
        return sorted((c for c in found if c is not None), key=lambda c: c.created_at, reverse=True)[:limit]

    async def active_campaigns(self) -> list[Campaign]:
        [ids] = await self._run("active_campaigns", [("SMEMBERS", keys.CAMPAIGNS_RUNNING)])
        found = await self.get_campaigns([codec.text(i) for i in ids])
        return [c for c in found if c is not None and c.active]

    async def scan_held(self, shard: int, cursor: str, count: int) -> tuple[str, list[str]]:
        [(after, found)] = await self._run("scan_held", [("ZSCAN", keys.due(self.tags[shard]), cursor, "COUNT", count)])
        return str(after), [codec.text(member) for member, _ in found]

    async def lease_campaign_shard(
        self, campaign_id: str, shard: int, owner: str, lease: timedelta, now: datetime
    ) -> ShardProgress | None:
        key = keys.campaign_shard(self.tags[shard], campaign_id)
        call = scripts.LEASE_CAMPAIGN.call([key], [owner, epoch_ms(now), ms(lease), ms(CAMPAIGN_RETENTION)])
        [raw] = await self._run("lease_campaign", [call])
        if raw is None:
            return None
        return codec.PROGRESS.decode(raw) if raw else ShardProgress(shard)

    async def save_campaign_shard(
        self, campaign_id: str, owner: str, progress: ShardProgress, lease: timedelta, now: datetime
    ) -> bool:
        key = keys.campaign_shard(self.tags[progress.shard], campaign_id)
        args = [owner, epoch_ms(now), ms(lease), ms(CAMPAIGN_RETENTION), codec.PROGRESS.encode(progress)]
        [saved] = await self._run("save_campaign", [scripts.SAVE_CAMPAIGN.call([key], args)])
        return bool(int(saved))

    async def campaign_progress(self, campaign_id: str) -> list[ShardProgress]:
        commands: list[Command] = [("HGET", keys.campaign_shard(tag, campaign_id), "p") for tag in self.tags]
        raws = await self._run("campaign_progress", commands)
        return [ShardProgress(shard) if raw is None else codec.PROGRESS.decode(raw) for shard, raw in enumerate(raws)]

    async def funnel(self, campaign_id: str) -> dict[str, int]:
        replies = await self._run("funnel", [("HGETALL", keys.funnel(tag, campaign_id)) for tag in self.tags])
        total: dict[str, int] = {}
        for fields in replies:
            for name, count in (fields or {}).items():
                field = codec.text(name)
                total[field] = total.get(field, 0) + int(count)
        return total

    async def add_funnel(self, user_id: str, campaign_id: str, field: str, once: str, by: int = 1) -> bool:
        tag = self.tag_of(user_id)
        call = scripts.FUNNEL_ONCE.call(
            [keys.funnel(tag, campaign_id), keys.funnel_once(tag, campaign_id)],
            [field, once, ms(CAMPAIGN_RETENTION), by],
        )
        [counted] = await self._run("add_funnel", [call])
        return bool(int(counted))

    # --- kill switches -------------------------------------------------------------
    async def put_kill_switch(self, switch: KillSwitch, audit: AuditEntry) -> None:
        await self._run(
            "put_kill_switch",
            [
                ("HSET", keys.KILL_SWITCHES, switch.switch_id, codec.SWITCH.encode(switch)),
                ("LPUSH", keys.KILL_AUDIT, codec.AUDIT.encode(audit)),
                ("LTRIM", keys.KILL_AUDIT, 0, keys.KILL_AUDIT_KEEP - 1),
                ("PUBLISH", keys.KILL_CHANGED, switch.switch_id),
            ],
        )

    async def clear_kill_switch(
        self, switch_id: str, audit_of: Callable[[KillSwitch], AuditEntry]
    ) -> KillSwitch | None:
        [raw] = await self._run("clear_kill_switch", [("HGET", keys.KILL_SWITCHES, switch_id)])
        if raw is None:
            return None
        switch = codec.SWITCH.decode(raw)
        removed, *_ = await self._run(
            "clear_kill_switch",
            [
                ("HDEL", keys.KILL_SWITCHES, switch_id),
                ("LPUSH", keys.KILL_AUDIT, codec.AUDIT.encode(audit_of(switch))),
                ("LTRIM", keys.KILL_AUDIT, 0, keys.KILL_AUDIT_KEEP - 1),
                ("PUBLISH", keys.KILL_CHANGED, switch_id),
            ],
        )
        return switch if removed else None

    async def watch_kill_switches(self, on_change: Callable[[], Awaitable[None]], stopping: asyncio.Event) -> None:
        """Call ``on_change`` whenever any replica changes a switch (pub/sub). Polling
        stays as the fallback: a lost connection only makes this wait and retry (logged
        once, then at a bounded rate, while Redis is away)."""
        failures = StepFailures("kill-switch-feed", event="kill_switch_feed_lost", detail="polling continues")
        while not stopping.is_set():
            pubsub = self._pubsub()
            try:
                await pubsub.subscribe(keys.KILL_CHANGED)
                failures.succeeded()
                while not stopping.is_set():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                    if message is not None:
                        await on_change()
            except Exception as exc:  # a cluster client in failover raises more than RedisError
                failures.failed(type(exc).__name__)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _pubsub(self) -> Any:
        return self.client.pubsub()

    async def kill_switches(self) -> list[KillSwitch]:
        [raw] = await self._run("kill_switches", [("HVALS", keys.KILL_SWITCHES)])
        return [codec.SWITCH.decode(item) for item in raw]

    async def kill_audit(self, limit: int) -> list[AuditEntry]:
        [raw] = await self._run("kill_audit", [("LRANGE", keys.KILL_AUDIT, 0, limit - 1)])
        return [codec.AUDIT.decode(item) for item in raw]

    # --- due index -----------------------------------------------------------------
    async def take_due(self, now: datetime, limit: int, lease: timedelta) -> list[tuple[str, datetime]]:
        until = now + lease
        calls = [scripts.TAKE_DUE.call([keys.due(tag)], [epoch_ms(now), limit, epoch_ms(until)]) for tag in self.tags]
        replies = await self._run("take_due", calls)
        return [(codec.text(user), until) for ids in replies for user in ids]

    async def finish_due(self, done: Sequence[tuple[str, datetime, datetime | None]]) -> None:
        calls = [
            scripts.FINISH_DUE.call(
                [keys.due(self.tag_of(user))],
                [user, epoch_ms(leased_until), "" if next_due is None else epoch_ms(next_due)],
            )
            for user, leased_until, next_due in done
        ]
        await self._run("finish_due", calls)

    async def due_count(self) -> int:
        replies = await self._run("due_count", [("ZCARD", keys.due(tag)) for tag in self.tags])
        return sum(int(n) for n in replies)

    # --- shared small state ----------------------------------------------------------
    async def shared_get(self, name: str) -> str | None:
        [raw] = await self._run("shared_get", [("GET", keys.shared(name))])
        return None if raw is None else codec.text(raw)

    async def shared_put(self, name: str, value: str, ttl: timedelta, *, only_if_absent: bool = False) -> bool:
        [done] = await self._run("shared_put", [shared_set(name, value, ttl, only_if_absent=only_if_absent)])
        return bool(done)

    async def shared_delete(self, name: str, only_if: str | None = None) -> bool:
        if only_if is None:
            [removed] = await self._run("shared_delete", [("DEL", keys.shared(name))])
        else:
            [removed] = await self._run("shared_delete", [scripts.DELETE_IF.call([keys.shared(name)], [only_if])])
        return bool(removed)

    async def take_tokens(self, bucket: str, rate: float, burst: int, want: int, now: datetime) -> tuple[int, float]:
        [reply] = await self._run(
            "take_token", [scripts.TAKE_TOKEN.call([keys.bucket(bucket)], [rate, burst, epoch_ms(now), want])]
        )
        granted, wait_ms = reply
        return int(granted), int(wait_ms) / 1000

    async def record_outcome(self, key: str, bad: bool, last: int, ttl: timedelta) -> tuple[int, int]:
        [reply] = await self._run(
            "record_outcome",
            [scripts.OUTCOME.call([keys.outcomes(key), keys.outcome_ring(key)], ["1" if bad else "0", last, ms(ttl)])],
        )
        total, bad_count = reply
        return int(total), int(bad_count)


def _pairs(reply: Sequence[Any]) -> list[tuple[Any, Any]]:
    """A WITHSCORES reply as (member, score) pairs: the lean client leaves it flat,
    redis-py's may have paired it already."""
    if reply and isinstance(reply[0], list | tuple):
        return [(member, score) for member, score in reply]
    return list(zip(reply[::2], reply[1::2], strict=True))


def from_ms(value: int | float | bytes) -> datetime:
    return datetime.fromtimestamp(float(value) / 1000, UTC)
