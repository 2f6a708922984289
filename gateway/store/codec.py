"""How stored and queued values are written: one mechanism (msgspec) for every type,
shared by both stores, the delivery queue and the local spool.

``CODECS`` lists every stored type with its format; tests/store/test_codec.py round-trips
each one, so a field one side forgets is a test failure, not lost data.

Formats: msgpack for what only Python reads (message records, jobs, answers); JSON for
what a Lua script also reads or edits (the arbitration state, interactions, the
timeline and a message's current state), and for profile fields (one field a section,
so that a partial update is a plain field write, atomic on Redis without a read).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

import msgspec

from gateway.values.campaigns import Campaign, ShardProgress
from gateway.values.decisions import PushAnswer
from gateway.values.domain import Category, Channel
from gateway.values.jobs import Job
from gateway.values.profiles import DeviceToken, Interaction, OptOut, Rfm, UserProfile, WeChat
from gateway.values.records import AuditEntry, Current, KillSwitch, MessageRecord, TimelineEntry
from gateway.values.state import DedupMark, Held, SentEntry, UserState

T = TypeVar("T")


class Undecodable(ValueError):
    """Stored bytes that are not a value this version understands."""


@dataclass(frozen=True)
class Codec(Generic[T]):
    type: type[T]
    json: bool = False

    def __post_init__(self) -> None:
        module: Any = msgspec.json if self.json else msgspec.msgpack
        object.__setattr__(self, "_encoder", module.Encoder())
        object.__setattr__(self, "_decoder", module.Decoder(self.type))

    def encode(self, value: T) -> bytes:
        data: bytes = self._encoder.encode(value)  # type: ignore[attr-defined]
        return data

    def decode(self, raw: bytes | str) -> T:
        try:
            value: T = self._decoder.decode(raw)  # type: ignore[attr-defined]
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise Undecodable(f"not a stored {self.type.__name__}: {exc}") from exc
        return value


class StoredState(msgspec.Struct, frozen=True, gc=False, omit_defaults=True):
    """A user's arbitration state as the ``st`` field holds it (the version is the
    ``v`` field beside it). Empty lists are left out: that is also how the Lua finish
    script writes them back."""

    r: tuple[SentEntry, ...] = ()
    h: tuple[Held, ...] = ()
    d: tuple[DedupMark, ...] = ()


class StoredOptOut(msgspec.Struct, frozen=True, gc=False):
    at: datetime
    source: str = ""


class StoredAnswer(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """An idempotency record: the request body's fingerprint and the first answer."""

    fingerprint: str
    answer: PushAnswer


class Parked(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """A job kept out of delivery: by a kill switch until ``until``, or waiting for a
    provider (a breaker's cool-down, a throttle) until ``until``."""

    job: Job
    until: datetime
    why: str = ""


class Spooled(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """A fail-open decision written to the local spool: its message and, when it was
    accepted, its job, handed to the store and the queue when the store is back."""

    record: MessageRecord
    job: Job | None = None


class DeadLetter(msgspec.Struct, frozen=True, gc=False, array_like=True):
    message_id: str
    reason: str
    at: datetime


CODECS: dict[str, Codec[Any]] = {
    "state": Codec(StoredState, json=True),
    "interactions": Codec(tuple[Interaction, ...], json=True),
    "interaction": Codec(Interaction, json=True),
    "event": Codec(TimelineEntry, json=True),
    "current": Codec(Current, json=True),
    "message": Codec(MessageRecord),
    "answer": Codec(StoredAnswer),
    "job": Codec(Job),
    "parked": Codec(Parked),
    "spooled": Codec(Spooled),
    "dead": Codec(DeadLetter),
    "switch": Codec(KillSwitch, json=True),
    "audit": Codec(AuditEntry, json=True),
    "opt_out": Codec(StoredOptOut, json=True),
    "wechat": Codec(WeChat | None, json=True),  # type: ignore[arg-type]
    "device_tokens": Codec(tuple[DeviceToken, ...], json=True),
    "rfm": Codec(Rfm, json=True),
    "tags": Codec(tuple[str, ...], json=True),
    "attributes": Codec(dict[str, str], json=True),
    "text": Codec(str, json=True),
    "time": Codec(datetime, json=True),
    "int": Codec(int, json=True),
    "campaign": Codec(Campaign),
    "progress": Codec(ShardProgress),
}
STATE: Codec[StoredState] = CODECS["state"]
INTERACTIONS: Codec[tuple[Interaction, ...]] = CODECS["interactions"]
INTERACTION: Codec[Interaction] = CODECS["interaction"]
EVENT: Codec[TimelineEntry] = CODECS["event"]
CURRENT: Codec[Current] = CODECS["current"]
MESSAGE: Codec[MessageRecord] = CODECS["message"]
ANSWER: Codec[StoredAnswer] = CODECS["answer"]
JOB: Codec[Job] = CODECS["job"]
PARKED: Codec[Parked] = CODECS["parked"]
SPOOLED: Codec[Spooled] = CODECS["spooled"]
DEAD: Codec[DeadLetter] = CODECS["dead"]
SWITCH: Codec[KillSwitch] = CODECS["switch"]
AUDIT: Codec[AuditEntry] = CODECS["audit"]
CAMPAIGN: Codec[Campaign] = CODECS["campaign"]
PROGRESS: Codec[ShardProgress] = CODECS["progress"]

# --- profiles: one hash field a section --------------------------------------------

OPT_OUT_PREFIX = "optout:"
UPDATED_AT = "updated_at"
_SECTION_CODECS: dict[str, Codec[Any]] = {
    "wechat": CODECS["wechat"],
    "phone": CODECS["text"],
    "email": CODECS["text"],
    "device_tokens": CODECS["device_tokens"],
    "timezone": CODECS["text"],
    "locale": CODECS["text"],
    "rfm": CODECS["rfm"],
    "tags": CODECS["tags"],
    "attributes": CODECS["attributes"],
}


def text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def encode_patch(patch: Mapping[str, Any], now: datetime) -> dict[bytes, bytes]:
    """Profile sections as hash fields, with the time of the write."""
    fields = {name.encode(): _SECTION_CODECS[name].encode(value) for name, value in patch.items()}
    fields[UPDATED_AT.encode()] = CODECS["time"].encode(now)
    return fields


def opt_out_field(key: str) -> str:
    return OPT_OUT_PREFIX + key


def encode_opt_out(entry: OptOut) -> tuple[bytes, bytes]:
    return opt_out_field(entry.key).encode(), CODECS["opt_out"].encode(StoredOptOut(entry.at, entry.source))


# A profile's fields hold JSON, under the name of the profile's field they fill: spliced
# into one JSON object they decode in one call, not one call a field (a campaign reads
# a million profiles). Opt-outs, one field each, are decoded apart.
_SPLICED = {name.encode(): b'"' + name.encode() + b'":' for name in (*_SECTION_CODECS, UPDATED_AT)}
_SPLICED[b"ix"] = b'"interactions":'
_PROFILE = msgspec.json.Decoder(UserProfile)
_OPT_OUT_PREFIX = OPT_OUT_PREFIX.encode()


def decode_profile(user_id: str, fields: Mapping[bytes, bytes]) -> UserProfile | None:
    """The profile in a user's hash; None when the hash holds no profile (never written,
    or only arbitration state left behind)."""
    if b"updated_at" not in fields:
        return None
    parts = [b'{"user_id":' + msgspec.json.encode(user_id)]
    opt_outs = []
    for name, value in fields.items():
        spliced = _SPLICED.get(name)
        if spliced is not None:
            parts.append(spliced + value)
        elif name.startswith(_OPT_OUT_PREFIX):
            category, channel = name[len(_OPT_OUT_PREFIX) :].decode().split(":")
            stored = CODECS["opt_out"].decode(value)
            opt_outs.append(
                OptOut(
                    category=None if category == "*" else Category(category),
                    channel=None if channel == "*" else Channel(channel),
                    at=stored.at,
                    source=stored.source,
                )
            )
    try:
        profile = _PROFILE.decode(b",".join(parts) + b"}")
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise Undecodable(f"not a stored UserProfile: {exc}") from exc
    if opt_outs:
        profile = msgspec.structs.replace(profile, opt_outs=tuple(sorted(opt_outs, key=lambda o: o.key)))
    return profile


def decode_state(version: bytes | str | None, stored: bytes | str | None) -> UserState:
    if not stored:
        return UserState(version=int(version or 0))
    state = STATE.decode(stored)
    return UserState(version=int(version or 0), sent=state.r, held=state.h, dedup=state.d)


def encode_state(state: UserState) -> bytes:
    return STATE.encode(StoredState(state.sent, state.held, state.dedup))


def decode_user(user_id: str, fields: Mapping[bytes, bytes]) -> tuple[UserProfile | None, UserState]:
    """A user's hash (field names as bytes, as Redis gives them) as the profile and the
    arbitration state."""
    return decode_profile(user_id, fields), decode_state(fields.get(b"v"), fields.get(b"st"))


# --- messages -----------------------------------------------------------------------


def encode_events(events: Iterable[TimelineEntry]) -> bytes:
    """Timeline entries as JSON lines, appended to a message's ``:ev`` value."""
    return b"".join(EVENT.encode(e) + b"\n" for e in events)


def decode_events(raw: bytes | str | None) -> tuple[TimelineEntry, ...]:
    if not raw:
        return ()
    data = raw if isinstance(raw, bytes) else raw.encode()
    return tuple(EVENT.decode(line) for line in data.split(b"\n") if line)


def decode_message(raw: bytes, events: bytes | None, current: bytes | None) -> MessageRecord:
    record = MESSAGE.decode(raw)
    return record.now(None if current is None else CURRENT.decode(current), decode_events(events))
