"""Every stored or queued type round-trips through its codec with every field set, and the
arbitration state survives the edit the Lua finish script makes to it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.store import codec
from gateway.store.codec import CODECS, DeadLetter, Parked, Spooled, StoredAnswer, StoredOptOut, StoredState
from gateway.values.campaigns import Campaign, CampaignState, ShardProgress, Variant
from gateway.values.claims import Claim, Content
from gateway.values.decisions import PushAnswer
from gateway.values.domain import Category, Channel, InteractionKind, Outcome, Platform, PushProvider, Reason
from gateway.values.jobs import Job
from gateway.values.profiles import DeviceToken, Interaction, OptOut, Rfm, UserProfile, WeChat
from gateway.values.records import AuditEntry, Current, KillSwitch, MessageRecord, ScopeKind, Step, TimelineEntry
from gateway.values.state import DedupMark, Held, SentEntry, UserState

NOW = datetime(2026, 11, 11, 2, 3, 4, 567890, tzinfo=UTC)
CLAIM = Claim(
    "order", "r-1", "u-1", "order.shipped", Category.BASIC, {"order_id": "O1", "city": "杭州"},
    Content("t", "b", "https://x"), "c-1", "d-1", NOW, NOW + timedelta(hours=1), 70,
)  # fmt: skip
JOB = Job("m_1", CLAIM, (Channel.WECHAT_TEMPLATE, Channel.SMS), NOW, 2)
RECORD = MessageRecord(
    "m_1", "r-1", "u-1", "order", "order.shipped", Category.BASIC, "c-1", Outcome.SCHEDULED, Reason.QUIET_HOURS,
    "held", (Channel.SMS,), NOW, NOW, "scheduled", "v1", {"a": "b"}, {"title": "t"}, 70, "d-1", NOW,
    (Step("route", (["SMS"], [["EMAIL", "no_contact"]])), Step("final", ("SCHEDULED", None, "held"))),
    (TimelineEntry(NOW, "scheduled", Channel.SMS, "0", "x"),),
)  # fmt: skip
SWITCH = KillSwitch("ks_1", ScopeKind.CAMPAIGN, "d11", "bad price", "sre", NOW, NOW + timedelta(hours=2))
ANSWER = PushAnswer("m_1", Category.BASIC, Outcome.ACCEPTED, None, "sending", (Channel.SMS,), NOW, "v1")
STATE = StoredState(
    (SentEntry("m_1", NOW, Category.MARKETING, Channel.APP_PUSH, "growth", True),),
    (Held("m_2", NOW, True),),
    (DedupMark("abcd", NOW),),
)

CAMPAIGN = Campaign(
    "d11", "marketing", "double11.presale", "tags any [vip]",
    (Variant("A", 3, {"discount": "150"}, Content("t", "b", "https://x")), Variant("B", 1)),
    NOW, NOW, CampaignState.PAUSED, "desc", 0.1, NOW, NOW + timedelta(days=1), 70, NOW, None, 4,
)  # fmt: skip

EXAMPLES: dict[str, Any] = {
    "state": STATE,
    "interactions": (Interaction(InteractionKind.MENU_CLICK, NOW),),
    "interaction": Interaction(InteractionKind.FOLLOW, NOW),
    "event": TimelineEntry(NOW, "delivered", Channel.WECHAT_TEMPLATE, "0", "ok (id 42)"),
    "current": Current("scheduled", Outcome.SCHEDULED, Reason.LOST_ARBITRATION, "carried", NOW),
    "message": RECORD,
    "answer": StoredAnswer("f" * 32, ANSWER),
    "job": JOB,
    "parked": Parked(JOB, NOW, "kill switch"),
    "spooled": Spooled(RECORD, JOB),
    "dead": DeadLetter("m_1", "no channel", NOW),
    "switch": SWITCH,
    "audit": AuditEntry(NOW, "clear", "sre", SWITCH, "fixed"),
    "opt_out": StoredOptOut(NOW, "sms-stop"),
    "wechat": WeChat("oAbc", "uXyz", True),
    "device_tokens": (DeviceToken("tok", Platform.ANDROID, PushProvider.JPUSH),),
    "rfm": Rfm(NOW, 3, 12345),
    "text": "杭州",
    "time": NOW,
    "int": 7,
    "tags": ("mom_baby", "城市:杭州"),
    "attributes": {"city": "杭州", "gender": "f"},
    "campaign": CAMPAIGN,
    "progress": ShardProgress(3, "1:42", False, 500, 120, 12, 1),
}


def test_every_codec_has_an_example() -> None:
    assert set(EXAMPLES) == set(CODECS)


@pytest.mark.parametrize("name", sorted(CODECS))
def test_round_trip(name: str) -> None:
    value = EXAMPLES[name]
    assert CODECS[name].decode(CODECS[name].encode(value)) == value


def test_what_is_not_ours_is_refused_with_a_reason() -> None:
    with pytest.raises(codec.Undecodable, match="not a stored Job"):
        codec.JOB.decode(b"\x93\x01\x02")


def test_state_edited_the_way_lua_cjson_does_still_decodes() -> None:
    # The finish script decodes the JSON, flags a reservation, drops empty lists and
    # encodes it again (cjson escapes '/', writes numbers its own way).
    raw = json.loads(codec.STATE.encode(StoredState(STATE.r, (), STATE.d)))
    raw["r"][0][5] = True
    again = json.dumps(raw).replace("/", "\\/").encode()
    assert codec.STATE.decode(again) == StoredState(STATE.r, (), STATE.d)


def test_every_lua_script_is_loaded_with_the_store() -> None:
    """A script left out of ALL is not loaded on a fresh Redis: its first call fails."""
    from gateway.store.redis import scripts
    from gateway.store.redis.connection import Script

    defined = {name for name, value in vars(scripts).items() if isinstance(value, Script)}
    assert {name for name, value in vars(scripts).items() if value in scripts.ALL} == defined


def test_a_profile_hash_decodes_to_the_profile_it_was_written_from() -> None:
    """Every section, opt-outs, interactions, the state fields and a field of no use to
    a profile, as a user's hash holds them: one profile back, each part in its place."""
    sections = {name: EXAMPLES[kind] for name, kind in PROFILE_KINDS.items()}
    fields = codec.encode_patch(sections, NOW)
    fields[b"ix"] = codec.INTERACTIONS.encode(EXAMPLES["interactions"])
    late, early = OptOut(Category.MARKETING, None, NOW, "td"), OptOut(None, Channel.SMS, NOW, "sms-stop")
    fields.update(dict([codec.encode_opt_out(late), codec.encode_opt_out(early)]))
    fields[b"v"], fields[b"st"], fields[b"later"] = b"3", codec.encode_state(UserState()), b"{not ours"
    profile = codec.decode_profile("u-1", fields)
    assert profile == UserProfile(
        "u-1",
        **sections,
        opt_outs=tuple(sorted((late, early), key=lambda o: o.key)),
        interactions=EXAMPLES["interactions"],
        updated_at=NOW,
    )
    assert codec.decode_profile("u-1", {b"v": b"3", b"st": b""}) is None  # state only: no profile


def test_a_damaged_profile_field_is_refused_with_a_reason() -> None:
    fields = codec.encode_patch({"phone": "+8613900000000"}, NOW)
    fields[b"rfm"] = b'{"orders_in_period": "many"}'
    with pytest.raises(codec.Undecodable, match="not a stored UserProfile"):
        codec.decode_profile("u-1", fields)


PROFILE_KINDS = {
    "wechat": "wechat",
    "phone": "text",
    "email": "text",
    "device_tokens": "device_tokens",
    "timezone": "text",
    "locale": "text",
    "rfm": "rfm",
    "tags": "tags",
    "attributes": "attributes",
}
