"""The wechat_events section: the sample's rules load, defaults hold without it, and
each bad rule is named by file and path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.policy.loader import load_policy
from gateway.policy.wechat_events import DEFAULT_OPT_OUT_REPLY, WechatEvents
from tests.conftest import POLICIES
from tests.policy.test_loader import problems

SECTION = "wechat_events:\n"


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    return target


def test_the_sample_rules() -> None:
    events = load_policy(POLICIES).wechat_events
    store = events.tags_from_qr_scene[0]
    assert store.scene == "store_*" and store.matches("store_hz_01") and not store.matches("d11_poster")
    assert store.tags == ("qr:{scene}", "offline_store")
    assert events.tags_from_keyword[0].keywords == ("秒杀", "MS")
    assert events.tags_from_menu[0].key == "MENU_NEW_ARRIVALS"
    assert events.opt_out_words == ("TD", "退订") and events.opt_in_words == ("订阅",)


def test_without_the_section_td_still_opts_out(policy_dir: Path) -> None:
    path = policy_dir / "channels.yaml"
    text = path.read_text(encoding="utf-8")
    path.write_text(text[: text.index("\n# What the official account's callbacks")] + "\n", encoding="utf-8")
    events = load_policy(policy_dir).wechat_events
    assert events == WechatEvents()
    assert events.opt_out_words == ("TD", "退订") and events.opt_out_reply == DEFAULT_OPT_OUT_REPLY


def test_the_section_may_live_in_its_own_file_but_only_once(policy_dir: Path) -> None:
    (policy_dir / "wechat.yaml").write_text("wechat_events:\n  opt_out_words: []\n", encoding="utf-8")
    found = problems(policy_dir)
    assert found == [f"{policy_dir}/wechat.yaml: wechat_events: already defined in {policy_dir}/channels.yaml"]


CASES = [
    (
        "unknown key",
        "  tags_from_menu:\n",
        "  tags_from_menus:\n",
        "channels.yaml: wechat_events: unknown key 'tags_from_menus'",
    ),
    (
        "bad static tag",
        "tags: [campaign:d11]",
        "tags: [campaign d11]",
        "channels.yaml: wechat_events.tags_from_qr_scene[1].tags[0]: 'campaign d11' is not a tag",
    ),
    (
        "placeholder other than scene",
        '"qr:{scene}"',
        '"qr:{store}"',
        "channels.yaml: wechat_events.tags_from_qr_scene[0].tags[0]: 'qr:{store}': the only placeholder",
    ),
    (
        "scene tag that can never be valid",
        '"qr:{scene}"',
        '"qr {scene}"',
        "channels.yaml: wechat_events.tags_from_qr_scene[0].tags[0]: 'qr {scene}' cannot make a tag",
    ),
    (
        "star inside a scene",
        'scene: "store_*"',
        'scene: "st*re_*"',
        "channels.yaml: wechat_events.tags_from_qr_scene[0].scene: 'st*re_*': '*' may only end a scene",
    ),
    (
        "rule without tags",
        "{scene: d11_poster, tags: [campaign:d11]}",
        "{scene: d11_poster, tags: []}",
        "channels.yaml: wechat_events.tags_from_qr_scene[1].tags: give at least one tag",
    ),
    (
        "keyword rule doing nothing",
        '      tags: [flash_sale_alerts]\n      reply: "已为您开启秒杀提醒，开抢前通知您。回复 TD 可退订营销消息。"\n',
        "",
        "channels.yaml: wechat_events.tags_from_keyword[0]: give tags, a reply or both",
    ),
    (
        "no keywords",
        "keywords: [秒杀, MS]",
        "keywords: []",
        "channels.yaml: wechat_events.tags_from_keyword[0].keywords: give at least one keyword",
    ),
    (
        "bad tag in a keyword rule",
        "tags: [flash_sale_alerts]",
        "tags: [flash sale]",
        "channels.yaml: wechat_events.tags_from_keyword[0].tags[0]: 'flash sale' is not a tag",
    ),
    (
        "blank keyword",
        "keywords: [秒杀, MS]",
        'keywords: [秒杀, "  "]',
        "channels.yaml: wechat_events.tags_from_keyword[0].keywords[1]: a word or keyword cannot be empty",
    ),
    (
        "reply too long",
        'reply: "已为您开启秒杀提醒，开抢前通知您。回复 TD 可退订营销消息。"',
        f"reply: {'秒' * 700}",
        "channels.yaml: wechat_events.tags_from_keyword[0].reply: a reply is at most 2048 bytes (UTF-8); this one is 2100",
    ),
    (
        "keyword that is an opt-out word",
        "keywords: [秒杀, MS]",
        "keywords: [秒杀, td]",
        "channels.yaml: wechat_events.tags_from_keyword[0].keywords[1]: 'td' is also in opt_out_words; "
        "a message can mean one thing only",
    ),
    (
        "word both in and out",
        "opt_in_words: [订阅]",
        "opt_in_words: [订阅, 退订]",
        "channels.yaml: wechat_events.opt_in_words[1]: '退订' is also in opt_out_words",
    ),
    (
        "full-width keyword in two rules",
        "  tags_from_menu:\n",
        "    - {keywords: [ＭＳ], tags: [ms]}\n  tags_from_menu:\n",
        "channels.yaml: wechat_events.tags_from_keyword[1].keywords[0]: 'ＭＳ' is also in tags_from_keyword[0].keywords",
    ),
    (
        "menu key twice",
        "{key: MENU_MOM_BABY, tags: [mom_baby]}",
        "{key: MENU_NEW_ARRIVALS, tags: [mom_baby]}",
        "channels.yaml: wechat_events.tags_from_menu[1].key: 'MENU_NEW_ARRIVALS' is also in tags_from_menu[0]; "
        "write its tags in one rule",
    ),
    (
        "yes/no trap in words",
        "opt_in_words: [订阅]",
        "opt_in_words: [订阅, yes]",
        "channels.yaml: wechat_events.opt_in_words[1]: Input should be a valid string",
    ),
]


@pytest.mark.parametrize(("name", "old", "new", "needle"), CASES, ids=[c[0] for c in CASES])
def test_each_bad_rule_is_named(policy_dir: Path, name: str, old: str, new: str, needle: str) -> None:
    path = policy_dir / "channels.yaml"
    text = path.read_text(encoding="utf-8")
    start = text.index(SECTION)
    assert old in text[start:], old
    path.write_text(text[:start] + text[start:].replace(old, new, 1), encoding="utf-8")
    found = problems(policy_dir)
    assert any(f"{policy_dir}/{needle}" in p for p in found), found
    assert len(found) == 1, found
