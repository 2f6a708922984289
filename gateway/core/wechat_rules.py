"""What a WeChat callback does to its user under the policy's ``wechat_events`` rules
(pure: the webhook applies the result)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from gateway.policy.wechat_events import SCENE, WechatEvents, normalize
from gateway.values.domain import Channel
from gateway.values.profiles import is_tag

# An opt-out word stops marketing on every WeChat channel (the template channel never
# carries marketing, but an entry there makes the user's wish explicit).
OPT_OUT_CHANNELS = (Channel.WECHAT_TEMPLATE, Channel.WECHAT_CS, Channel.WECHAT_MASS)
OPT_OUT_SOURCE = "wechat-reply"
QR_FOLLOW_PREFIX = "qrscene_"


@dataclass(frozen=True)
class Actions:
    # Valid and distinct, in the order of the rules.
    tags: tuple[str, ...] = ()
    # Where a rule made something that is not a tag (``tags_from_qr_scene[0].tags[1]``),
    # skipped.
    bad_tags: tuple[str, ...] = ()
    # True: opt out of marketing on OPT_OUT_CHANNELS; False: opt back in.
    opt_out: bool | None = None
    # The passive reply's text.
    reply: str | None = None
    # The rules that matched, by path under wechat_events (for the log).
    rules: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.tags or self.bad_tags or self.opt_out is not None or self.reply is not None)


NOTHING = Actions()


def scene_of(event: Mapping[str, str]) -> str | None:
    """The QR code's scene: a follow through it (``qrscene_<scene>``) or a follower's
    scan (``<scene>``); None for anything else."""
    if event.get("MsgType") != "event":
        return None
    name, key = event.get("Event", ""), event.get("EventKey", "")
    if name == "subscribe" and key.startswith(QR_FOLLOW_PREFIX):
        return key[len(QR_FOLLOW_PREFIX) :] or None
    if name == "SCAN":
        return key or None
    return None


def actions_for(rules: WechatEvents, event: Mapping[str, str]) -> Actions:
    msg_type = event.get("MsgType", "")
    if msg_type == "text":
        return _text(rules, normalize(event.get("Content", "")))
    if msg_type == "event" and event.get("Event") == "CLICK":
        key = event.get("EventKey", "")
        matched = [(f"tags_from_menu[{i}]", r.tags) for i, r in enumerate(rules.tags_from_menu) if r.key == key]
        return _tagged(matched)
    scene = scene_of(event)
    if scene is None:
        return NOTHING
    found = []
    for index, rule in enumerate(rules.tags_from_qr_scene):
        if rule.matches(scene):
            found.append((f"tags_from_qr_scene[{index}]", tuple(tag.replace(SCENE, scene) for tag in rule.tags)))
    return _tagged(found)


def _text(rules: WechatEvents, text: str) -> Actions:
    return _words(rules).get(text, NOTHING) if text else NOTHING


@lru_cache(maxsize=8)
def _words(rules: WechatEvents) -> dict[str, Actions]:
    """What each (normalized) text message does, worked out once per policy: opt-out
    words first, then opt-in words, then the keyword rules in order (the first wins;
    the loader refuses a word with two meanings anyway)."""
    words: dict[str, Actions] = {}
    for word in rules.opt_out_words:
        words.setdefault(normalize(word), Actions(opt_out=True, reply=rules.opt_out_reply, rules=("opt_out_words",)))
    for word in rules.opt_in_words:
        words.setdefault(normalize(word), Actions(opt_out=False, reply=rules.opt_in_reply, rules=("opt_in_words",)))
    for index, rule in enumerate(rules.tags_from_keyword):
        found = _tagged([(f"tags_from_keyword[{index}]", rule.tags or ())])
        for keyword in rule.keywords:
            words.setdefault(
                normalize(keyword), Actions(found.tags, found.bad_tags, reply=rule.reply, rules=found.rules)
            )
    return words


def _tagged(matched: list[tuple[str, tuple[str, ...]]]) -> Actions:
    tags: dict[str, None] = {}
    bad: list[str] = []
    for where, made in matched:
        for index, tag in enumerate(made):
            if is_tag(tag):
                tags[tag] = None
            else:
                bad.append(f"{where}.tags[{index}]")
    return Actions(tuple(tags), tuple(bad), rules=tuple(where for where, _ in matched))
