"""What a WeChat event does under the wechat_events rules (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.core.wechat_rules import NOTHING, Actions, actions_for, scene_of
from gateway.policy.wechat_events import WechatEvents
from gateway.values.profiles import is_tag

RULES = WechatEvents.model_validate(
    {
        "tags_from_qr_scene": [
            {"scene": "store_*", "tags": ["qr:{scene}", "offline_store"]},
            {"scene": "store_hz_01", "tags": ["hangzhou", "offline_store"]},
            {"scene": "*", "tags": ["came_by_qr", "{scene}"]},
        ],
        "tags_from_keyword": [
            {"keywords": ["秒杀", "MS"], "tags": ["flash_sale_alerts"], "reply": "已开启秒杀提醒"},
            {"keywords": ["help"], "reply": "Reply TD to stop marketing."},
        ],
        "tags_from_menu": [{"key": "MENU_NEW", "tags": ["new_arrivals"]}],
    }
)


def event(kind: str, key: str = "") -> dict[str, str]:
    return {"MsgType": "event", "Event": kind, "EventKey": key}


def text(content: str) -> dict[str, str]:
    return {"MsgType": "text", "Content": content}


@pytest.mark.parametrize(
    ("given", "scene"),
    [
        (event("subscribe", "qrscene_store_hz_01"), "store_hz_01"),
        (event("SCAN", "store_hz_01"), "store_hz_01"),
        (event("subscribe", ""), None),  # a follow by search: no QR code
        (event("subscribe", "qrscene_"), None),
        (event("SCAN", ""), None),
        (event("CLICK", "store_hz_01"), None),
        (event("unsubscribe", "qrscene_store_hz_01"), None),
        (text("store_hz_01"), None),
    ],
)
def test_scene_of(given: dict[str, str], scene: str | None) -> None:
    assert scene_of(given) == scene


def test_every_matching_scene_rule_applies_and_tags_are_distinct() -> None:
    got = actions_for(RULES, event("SCAN", "store_hz_01"))
    assert got.tags == ("qr:store_hz_01", "offline_store", "hangzhou", "came_by_qr", "store_hz_01")
    assert got.rules == ("tags_from_qr_scene[0]", "tags_from_qr_scene[1]", "tags_from_qr_scene[2]")
    assert got.reply is None and got.opt_out is None


def test_a_scene_that_makes_a_bad_tag_is_skipped_not_fatal() -> None:
    got = actions_for(RULES, event("subscribe", "qrscene_store_" + "x" * 60))
    # qr:store_xxx... is 69 characters, and so is the bare scene: both skipped.
    assert got.tags == ("offline_store", "came_by_qr")
    assert got.bad_tags == ("tags_from_qr_scene[0].tags[0]", "tags_from_qr_scene[2].tags[1]")
    spaced = actions_for(RULES, event("SCAN", "d11 poster"))
    assert spaced.tags == ("came_by_qr",) and spaced.bad_tags == ("tags_from_qr_scene[2].tags[1]",)


@pytest.mark.parametrize("content", ["秒杀", " 秒杀\n", "ms", "Ｍｓ"])
def test_keyword_trimmed_any_case(content: str) -> None:
    assert actions_for(RULES, text(content)) == Actions(
        ("flash_sale_alerts",), reply="已开启秒杀提醒", rules=("tags_from_keyword[0]",)
    )


def test_keyword_with_a_reply_only() -> None:
    got = actions_for(RULES, text("HELP"))
    assert got.tags == () and got.reply == "Reply TD to stop marketing."


@pytest.mark.parametrize("content", ["TD", "td", " Td ", "ＴＤ", "退订", "退订\n"])
def test_opt_out_words(content: str) -> None:
    got = actions_for(RULES, text(content))
    assert got.opt_out is True and got.reply == "您已退订营销消息。回复 订阅 可重新订阅。" and got.tags == ()


def test_opt_in_word() -> None:
    got = actions_for(RULES, text("订阅"))
    assert got.opt_out is False and got.reply == "您已重新订阅营销消息。回复 TD 可退订。"


@pytest.mark.parametrize("content", ["TD please", "我要秒杀", "", "   ", "T D"])
def test_other_messages_do_nothing(content: str) -> None:
    assert actions_for(RULES, text(content)) is NOTHING
    assert not NOTHING


def test_opt_out_words_can_be_turned_off() -> None:
    assert actions_for(WechatEvents(opt_out_words=(), opt_in_words=()), text("TD")) is NOTHING


def test_menu_click_by_exact_key() -> None:
    assert actions_for(RULES, event("CLICK", "MENU_NEW")).tags == ("new_arrivals",)
    assert actions_for(RULES, event("CLICK", "menu_new")) == NOTHING
    assert actions_for(RULES, event("VIEW", "MENU_NEW")) == NOTHING


# Any scene, key or message: never an exception, and only valid tags come out.
anything = st.text(max_size=120) | st.sampled_from(["store_", "store_ 1", "store_" + "x" * 70, "{scene}", "]]>"])


@given(scene=anything, kind=st.sampled_from(["subscribe", "SCAN", "CLICK"]), content=anything)
def test_any_event_makes_only_valid_tags(scene: str, kind: str, content: str) -> None:
    key = f"qrscene_{scene}" if kind == "subscribe" else scene
    for got in (actions_for(RULES, event(kind, key)), actions_for(RULES, text(content))):
        assert all(is_tag(tag) for tag in got.tags)
        assert len(set(got.tags)) == len(got.tags)
