"""Protobuf <-> domain values, at the edge and nowhere else."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from gateway.core.trace import render
from gateway.core.users import UserExport
from gateway.errors import InvalidArgument
from gateway.values.claims import Content, PushInput
from gateway.values.decisions import PushAnswer
from gateway.values.domain import Category, Channel, InteractionKind, Outcome, Platform, PushProvider, Reason
from gateway.values.profiles import CONTACT_SECTIONS, PROFILE_SECTIONS, DeviceToken, Rfm, UserProfile, WeChat
from gateway.values.records import MessageRecord
from herald.v1 import profile_pb2, push_pb2, types_pb2

# --- enums: same names on both sides -------------------------------------------------
# Looked up by name once: every answer converts three or more, and protobuf's
# ``Value(name)`` is Python code.
_CATEGORY_PB = {c: types_pb2.Category.Value(c.name) for c in Category}
_CHANNEL_PB = {c: types_pb2.Channel.Value(c.name) for c in Channel}
_OUTCOME_PB = {o: types_pb2.Outcome.Value(o.name) for o in Outcome}
_REASON_PB = {r: types_pb2.Reason.Value(r.name) for r in Reason}


def category_to_pb(value: Category) -> types_pb2.Category.ValueType:
    return _CATEGORY_PB[value]


def category_from_pb(value: int, field: str) -> Category | None:
    if value == types_pb2.CATEGORY_UNSPECIFIED:
        return None
    try:
        return Category[types_pb2.Category.Name(value)]  # type: ignore[arg-type]
    except ValueError:
        raise InvalidArgument(field, f"unknown category value {value}") from None


def channel_to_pb(value: Channel) -> types_pb2.Channel.ValueType:
    return _CHANNEL_PB[value]


def channel_from_pb(value: int, field: str) -> Channel | None:
    if value == types_pb2.CHANNEL_UNSPECIFIED:
        return None
    try:
        return Channel[types_pb2.Channel.Name(value)]  # type: ignore[arg-type]
    except ValueError:
        raise InvalidArgument(field, f"unknown channel value {value}") from None


def _outcome_to_pb(value: Outcome) -> types_pb2.Outcome.ValueType:
    return _OUTCOME_PB[value]


def outcome_from_pb(value: int, field: str) -> Outcome | None:
    """An optional outcome (a filter): unset is None."""
    if value == types_pb2.OUTCOME_UNSPECIFIED:
        return None
    outcome: Outcome = _enum_from_pb(types_pb2.Outcome, Outcome, value, field)
    return outcome


def _reason_to_pb(value: Reason | None) -> types_pb2.Reason.ValueType:
    return types_pb2.REASON_UNSPECIFIED if value is None else _REASON_PB[value]


def _enum_from_pb(enum_pb: Any, enum_py: Any, value: int, field: str) -> Any:
    if value == 0:
        raise InvalidArgument(field, "is required")
    try:
        return enum_py[enum_pb.Name(value)]
    except (ValueError, KeyError):
        raise InvalidArgument(field, f"unknown value {value}") from None


# --- times ---------------------------------------------------------------------------


def ts_to_dt(message: Any, name: str) -> datetime | None:
    if not message.HasField(name):
        return None
    stamp: Timestamp = getattr(message, name)
    if not 0 <= stamp.nanos < 1_000_000_000:
        raise InvalidArgument(name, "has nanos outside 0..999999999")
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(name, "is not a valid timestamp") from None


def dt_to_ts(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


# --- push ----------------------------------------------------------------------------


def content_of(message: Any) -> Content | None:
    """The ``content`` field of a request (a push, a campaign's variant), if set."""
    if not message.HasField("content"):
        return None
    return Content(message.content.title, message.content.body, message.content.url)


def push_input(request: push_pb2.PushRequest) -> PushInput:
    content = content_of(request)
    return PushInput(
        request_id=request.request_id,
        user_id=request.user_id,
        scenario=request.scenario,
        params=dict(request.params),
        content=content,
        campaign_id=request.campaign_id,
        dedup_key=request.dedup_key,
        not_before=ts_to_dt(request, "not_before"),
        deadline=ts_to_dt(request, "deadline"),
        priority=request.priority if request.HasField("priority") else None,
    )


def push_response(answer: PushAnswer) -> push_pb2.PushResponse:
    response = push_pb2.PushResponse(
        message_id=answer.message_id,
        category=category_to_pb(answer.category),
        outcome=_outcome_to_pb(answer.outcome),
        reason=_reason_to_pb(answer.reason),
        detail=answer.detail,
        channel_plan=[channel_to_pb(c) for c in answer.plan],
        policy_version=answer.policy_version,
    )
    if answer.scheduled_at is not None:
        response.scheduled_at.CopyFrom(dt_to_ts(answer.scheduled_at))
    return response


def message(record: MessageRecord) -> push_pb2.Message:
    out = push_pb2.Message(
        message_id=record.message_id,
        request_id=record.request_id,
        user_id=record.user_id,
        business_unit=record.business_unit,
        scenario=record.scenario,
        category=category_to_pb(record.category),
        campaign_id=record.campaign_id,
        outcome=_outcome_to_pb(record.outcome),
        reason=_reason_to_pb(record.reason),
        detail=record.detail,
        channel_plan=[channel_to_pb(c) for c in record.channel_plan],
        status=record.status,
        policy_version=record.policy_version,
        trace=render(record.trace),
    )
    out.created_at.CopyFrom(dt_to_ts(record.created_at))
    if record.scheduled_at is not None:
        out.scheduled_at.CopyFrom(dt_to_ts(record.scheduled_at))
    for event in record.timeline:
        item = out.timeline.add(
            kind=event.kind,
            channel=types_pb2.CHANNEL_UNSPECIFIED if event.channel is None else channel_to_pb(event.channel),
            provider_code=event.provider_code,
            detail=event.detail,
        )
        item.at.CopyFrom(dt_to_ts(event.at))
    return out


# --- profiles ------------------------------------------------------------------------


def _sections_of(user: profile_pb2.User, field_prefix: str) -> dict[str, Any]:
    rfm = Rfm(
        last_purchase_at=ts_to_dt(user.rfm, "last_purchase_at"),
        orders_in_period=user.rfm.orders_in_period,
        spend_in_period_minor=user.rfm.spend_in_period_minor,
    )
    tokens = tuple(
        DeviceToken(
            token=t.token,
            platform=_enum_from_pb(
                profile_pb2.Platform, Platform, t.platform, f"{field_prefix}.device_tokens[{i}].platform"
            ),
            provider=_enum_from_pb(
                profile_pb2.PushProvider, PushProvider, t.provider, f"{field_prefix}.device_tokens[{i}].provider"
            ),
        )
        for i, t in enumerate(user.device_tokens)
    )
    wechat = None
    if user.HasField("wechat") and (user.wechat.openid or user.wechat.unionid):
        wechat = WeChat(user.wechat.openid, user.wechat.unionid, user.wechat.following)
    return {
        "wechat": wechat,
        "phone": user.phone,
        "email": user.email,
        "device_tokens": tokens,
        "timezone": user.timezone,
        "locale": user.locale,
        "rfm": rfm,
        "tags": tuple(sorted(set(user.tags))),
        "attributes": dict(user.attributes),
    }


def profile_patch(request: profile_pb2.UpsertUserRequest, field_prefix: str = "user") -> dict[str, Any]:
    """The sections an upsert replaces: those in the mask; without a mask, the contact
    sections, plus tags and attributes when the request sets them."""
    sections = _sections_of(request.user, field_prefix)
    paths = list(request.update_mask.paths)
    if not paths:
        return {name: value for name, value in sections.items() if name in CONTACT_SECTIONS or value}
    unknown = [p for p in paths if p not in PROFILE_SECTIONS]
    if unknown:
        raise InvalidArgument("update_mask", f"unknown path '{unknown[0]}'; use {', '.join(PROFILE_SECTIONS)}")
    return {path: sections[path] for path in paths}


def interaction_kind(value: int) -> InteractionKind:
    kind: InteractionKind = _enum_from_pb(profile_pb2.InteractionKind, InteractionKind, value, "kind")
    return kind


def user(profile: UserProfile, tier: str) -> profile_pb2.User:
    out = profile_pb2.User(
        user_id=profile.user_id,
        phone=profile.phone,
        email=profile.email,
        timezone=profile.timezone,
        locale=profile.locale,
        rfm_tier=tier,
    )
    if profile.wechat is not None:
        out.wechat.CopyFrom(
            profile_pb2.WeChatIdentity(
                openid=profile.wechat.openid, unionid=profile.wechat.unionid, following=profile.wechat.following
            )
        )
    for token in profile.device_tokens:
        out.device_tokens.add(
            token=token.token,
            platform=profile_pb2.Platform.Value(token.platform.name),
            provider=profile_pb2.PushProvider.Value(token.provider.name),
        )
    out.rfm.orders_in_period = profile.rfm.orders_in_period
    out.rfm.spend_in_period_minor = profile.rfm.spend_in_period_minor
    if profile.rfm.last_purchase_at is not None:
        out.rfm.last_purchase_at.CopyFrom(dt_to_ts(profile.rfm.last_purchase_at))
    for entry in profile.opt_outs:
        item = out.opt_outs.add(
            category=types_pb2.CATEGORY_UNSPECIFIED if entry.category is None else category_to_pb(entry.category),
            channel=types_pb2.CHANNEL_UNSPECIFIED if entry.channel is None else channel_to_pb(entry.channel),
            source=entry.source,
        )
        item.at.CopyFrom(dt_to_ts(entry.at))
    for interaction in profile.interactions:
        ix = out.recent_interactions.add(kind=profile_pb2.InteractionKind.Value(interaction.kind.name))
        ix.at.CopyFrom(dt_to_ts(interaction.at))
    out.tags.extend(profile.tags)
    out.attributes.update(profile.attributes)
    if profile.updated_at is not None:
        out.updated_at.CopyFrom(dt_to_ts(profile.updated_at))
    return out


def scenario_infos(bu: str, scenarios: Mapping[str, Any], granted: tuple[str, ...]) -> list[push_pb2.ScenarioInfo]:
    out = []
    for name in sorted(granted):
        scenario = scenarios[name]
        out.append(
            push_pb2.ScenarioInfo(
                name=name,
                category=category_to_pb(scenario.category),
                required_params=list(scenario.params),
                optional_params=list(scenario.optional_params),
                free_text=scenario.free_text,
                channels=[channel_to_pb(c) for c in scenario.channels],
            )
        )
    return out


def export(data: UserExport, user_pb: profile_pb2.User | None) -> profile_pb2.ExportUserResponse:
    """Everything held of a user; ``user_pb`` is the profile as GetUser answers it."""
    out = profile_pb2.ExportUserResponse(messages=[message(r) for r in data.messages])
    if user_pb is not None:
        out.user.CopyFrom(user_pb)
    for entry in data.state.sent:
        reservation = out.reservations.add(
            message_id=entry.message_id,
            category=category_to_pb(entry.category),
            channel=channel_to_pb(entry.channel),
            business_unit=entry.bu,
            committed=entry.committed,
        )
        reservation.at.CopyFrom(dt_to_ts(entry.at))
    for held in data.state.held:
        out.held.add(message_id=held.message_id, pooled=held.pooled).due.CopyFrom(dt_to_ts(held.due))
    for mark in data.state.dedup:
        out.dedup_marks.add(key_hash=mark.key).until.CopyFrom(dt_to_ts(mark.until))
    return out
