"""How stored values are written: one codec for both stores, so they cannot drift.

Profiles are kept as a map of fields (one per section, one per opt-out) so that a
partial update is a plain field write, atomic on Redis without a read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway.core.state import SentEntry
from gateway.domain import Category, Channel, InteractionKind, Outcome, Platform, PushProvider, Reason
from gateway.profiles import DeviceToken, Interaction, OptOut, Rfm, UserProfile, WeChat
from gateway.store.records import AuditEntry, Final, KillSwitch, MessageRecord, ScopeKind, TimelineEntry

OPT_OUT_PREFIX = "optout:"
UPDATED_AT = "updated_at"


def _dt(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


# --- profiles -----------------------------------------------------------------------


def encode_section(name: str, value: Any) -> str:
    if name == "wechat":
        return dumps(None if value is None else asdict(value))
    if name == "device_tokens":
        return dumps([{"token": t.token, "platform": str(t.platform), "provider": str(t.provider)} for t in value])
    if name == "rfm":
        return dumps(
            {
                "last_purchase_at": _dt(value.last_purchase_at),
                "orders_in_period": value.orders_in_period,
                "spend_in_period_minor": value.spend_in_period_minor,
            }
        )
    return dumps(value)


def encode_patch(patch: Mapping[str, Any], now: datetime) -> dict[str, str]:
    fields = {name: encode_section(name, value) for name, value in patch.items()}
    fields[UPDATED_AT] = dumps(_dt(now))
    return fields


def encode_opt_out(entry: OptOut) -> tuple[str, str]:
    return OPT_OUT_PREFIX + entry.key, dumps({"at": _dt(entry.at), "source": entry.source})


def opt_out_field(key: str) -> str:
    return OPT_OUT_PREFIX + key


def encode_interaction(entry: Interaction) -> str:
    return dumps({"kind": str(entry.kind), "at": _dt(entry.at)})


def decode_profile(
    user_id: str, fields: Mapping[str, str] | Mapping[bytes, bytes], interactions: Iterable[str | bytes]
) -> UserProfile:
    values: dict[str, Any] = {}
    opt_outs = []
    updated_at = None
    for raw_name, raw_value in fields.items():
        name, data = text(raw_name), orjson.loads(raw_value)
        if name.startswith(OPT_OUT_PREFIX):
            category, channel = name[len(OPT_OUT_PREFIX) :].split(":")
            opt_outs.append(
                OptOut(
                    category=None if category == "*" else Category(category),
                    channel=None if channel == "*" else Channel(channel),
                    at=datetime.fromisoformat(data["at"]),
                    source=data.get("source", ""),
                )
            )
        elif name == UPDATED_AT:
            updated_at = _parse_dt(data)
        elif name == "wechat":
            values[name] = None if data is None else WeChat(**data)
        elif name == "device_tokens":
            values[name] = tuple(
                DeviceToken(d["token"], Platform(d["platform"]), PushProvider(d["provider"])) for d in data
            )
        elif name == "rfm":
            values[name] = Rfm(
                last_purchase_at=_parse_dt(data["last_purchase_at"]),
                orders_in_period=data["orders_in_period"],
                spend_in_period_minor=data["spend_in_period_minor"],
            )
        else:
            values[name] = data
    decoded = [orjson.loads(item) for item in interactions]
    return UserProfile(
        user_id=user_id,
        opt_outs=tuple(sorted(opt_outs, key=lambda o: o.key)),
        interactions=tuple(Interaction(InteractionKind(d["kind"]), datetime.fromisoformat(d["at"])) for d in decoded),
        updated_at=updated_at,
        **values,
    )


# --- messages -----------------------------------------------------------------------


def encode_event(entry: TimelineEntry) -> str:
    return dumps(
        {
            "at": _dt(entry.at),
            "kind": entry.kind,
            "channel": None if entry.channel is None else str(entry.channel),
            "code": entry.provider_code,
            "detail": entry.detail,
        }
    )


def decode_event(raw: str | bytes) -> TimelineEntry:
    data = orjson.loads(raw)
    return TimelineEntry(
        at=datetime.fromisoformat(data["at"]),
        kind=data["kind"],
        channel=None if data["channel"] is None else Channel(data["channel"]),
        provider_code=data["code"],
        detail=data["detail"],
    )


def encode_message(record: MessageRecord) -> str:
    return dumps(
        {
            "message_id": record.message_id,
            "request_id": record.request_id,
            "user_id": record.user_id,
            "business_unit": record.business_unit,
            "scenario": record.scenario,
            "category": str(record.category),
            "campaign_id": record.campaign_id,
            "outcome": str(record.outcome),
            "reason": None if record.reason is None else str(record.reason),
            "detail": record.detail,
            "channel_plan": [str(c) for c in record.channel_plan],
            "scheduled_at": _dt(record.scheduled_at),
            "created_at": _dt(record.created_at),
            "status": record.status,
            "policy_version": record.policy_version,
            "params": record.params,
            "content": record.content,
            "priority": record.priority,
            "dedup_key": record.dedup_key,
            "deadline": _dt(record.deadline),
            "trace": list(record.trace),
        }
    )


def encode_final(final: Final) -> str:
    return dumps({"o": str(final.outcome), "r": None if final.reason is None else str(final.reason), "d": final.detail})


def decode_message(
    raw: str | bytes,
    events: Iterable[str | bytes] = (),
    status: str | None = None,
    final: str | bytes | None = None,
) -> MessageRecord:
    data = orjson.loads(raw)
    if final is not None:
        last = orjson.loads(final)
        data["outcome"], data["reason"], data["detail"] = last["o"], last["r"], last["d"]
    timeline = tuple(decode_event(e) for e in events)
    return MessageRecord(
        message_id=data["message_id"],
        request_id=data["request_id"],
        user_id=data["user_id"],
        business_unit=data["business_unit"],
        scenario=data["scenario"],
        category=Category(data["category"]),
        campaign_id=data["campaign_id"],
        outcome=Outcome(data["outcome"]),
        reason=None if data["reason"] is None else Reason(data["reason"]),
        detail=data["detail"],
        channel_plan=tuple(Channel(c) for c in data["channel_plan"]),
        scheduled_at=_parse_dt(data["scheduled_at"]),
        created_at=datetime.fromisoformat(data["created_at"]),
        status=status or data["status"],
        policy_version=data["policy_version"],
        params=data["params"],
        content=data["content"],
        priority=data["priority"],
        dedup_key=data["dedup_key"],
        deadline=_parse_dt(data["deadline"]),
        trace=tuple(data.get("trace", ())),
        timeline=timeline,
    )


# --- kill switches ------------------------------------------------------------------


def switch_dict(switch: KillSwitch) -> dict[str, Any]:
    return {
        "id": switch.switch_id,
        "scope": str(switch.scope),
        "value": switch.value,
        "reason": switch.reason,
        "actor": switch.actor,
        "created_at": _dt(switch.created_at),
        "expires_at": _dt(switch.expires_at),
    }


def _switch_from(data: Mapping[str, Any]) -> KillSwitch:
    return KillSwitch(
        switch_id=data["id"],
        scope=ScopeKind(data["scope"]),
        value=data["value"],
        reason=data["reason"],
        actor=data["actor"],
        created_at=datetime.fromisoformat(data["created_at"]),
        expires_at=_parse_dt(data["expires_at"]),
    )


def encode_switch(switch: KillSwitch) -> str:
    return dumps(switch_dict(switch))


def decode_switch(raw: str | bytes) -> KillSwitch:
    return _switch_from(orjson.loads(raw))


def encode_audit(entry: AuditEntry) -> str:
    return dumps(
        {
            "at": _dt(entry.at),
            "action": entry.action,
            "actor": entry.actor,
            "note": entry.note,
            "switch": switch_dict(entry.switch),
        }
    )


def decode_audit(raw: str | bytes) -> AuditEntry:
    data = orjson.loads(raw)
    return AuditEntry(
        at=datetime.fromisoformat(data["at"]),
        action=data["action"],
        actor=data["actor"],
        note=data["note"],
        switch=_switch_from(data["switch"]),
    )


# --- arbitration state --------------------------------------------------------------


def encode_sent_info(category: Category, channel: Channel, bu: str, committed: bool) -> str:
    return f"{category}|{channel}|{bu}|{int(committed)}"


def decode_sent(message_id: str | bytes, at_seconds: float, info: str | bytes) -> SentEntry:
    category, channel, bu, committed = text(info).split("|")
    return SentEntry(
        message_id=text(message_id),
        at=datetime.fromtimestamp(at_seconds, UTC),
        category=Category(category),
        channel=Channel(channel),
        bu=bu,
        committed=committed == "1",
    )
