"""The ``wechat_events`` policy section: what the WeChat official account's callbacks
do to the user who sent them (docs/wechat-events.md).

- ``tags_from_qr_scene``: a follow through a parametric QR code (``subscribe`` with
  ``EventKey`` ``qrscene_<scene>``) or a scan by a follower (``SCAN``, ``EventKey``
  ``<scene>``) adds the tags of every rule whose ``scene`` matches: exactly, or as a
  prefix when it ends in ``*``. A tag may hold ``{scene}``; the tag it makes is checked
  when the scene is known (a bad one is skipped and logged).
- ``tags_from_keyword``: a text message equal to a keyword adds tags and may be
  answered with ``reply``.
- ``tags_from_menu``: a menu ``CLICK`` with that ``key`` adds tags.
- ``opt_out_words`` / ``opt_in_words``: a text message equal to one opts the user out
  of (or back into) marketing on the WeChat channels, answered with the reply.

Words and keywords match the message trimmed, NFKC-normalised (full-width letters as
ASCII) and case-folded: ``td``, ``ＴＤ`` and `` TD `` are ``TD``.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, model_validator

from gateway.values.profiles import MAX_TAGS, NOT_A_TAG, is_tag

SCENE = "{scene}"
MAX_SCENE = 64  # WeChat's scene_str is 1-64 characters (a scene_id: a number)
MAX_MENU_KEY = 128  # WeChat's limit for a menu button's key, in bytes
MAX_KEYWORD = 64
# A passive reply is answered within WeChat's 5 seconds and shown as one text bubble;
# Herald holds its texts to WeChat's customer-service text limit.
MAX_REPLY_BYTES = 2048
DEFAULT_OPT_OUT_WORDS = ("TD", "退订")
DEFAULT_OPT_OUT_REPLY = "您已退订营销消息。回复 订阅 可重新订阅。"
DEFAULT_OPT_IN_WORDS = ("订阅",)
DEFAULT_OPT_IN_REPLY = "您已重新订阅营销消息。回复 TD 可退订。"


def normalize(text: str) -> str:
    """How a message and a keyword are compared."""
    return unicodedata.normalize("NFKC", text).strip().casefold()


def _tag(value: str) -> str:
    if not is_tag(value):
        raise ValueError(f"'{value[:64]}' is not a tag: {NOT_A_TAG}")
    return value


def _scene_tag(value: str) -> str:
    rest = value.replace(SCENE, "")
    if "{" in rest or "}" in rest:
        raise ValueError(f"'{value[:64]}': the only placeholder a scene's tag may use is {SCENE}")
    if SCENE in value:
        # The scene takes at least one character; the tag it makes is checked at run time.
        if not is_tag(value.replace(SCENE, "x")):
            raise ValueError(f"'{value[:64]}' cannot make a tag: with {SCENE} filled in it must be {NOT_A_TAG}")
        return value
    return _tag(value)


def _scene(value: str) -> str:
    body = value.removesuffix("*")
    if "*" in body:
        raise ValueError(f"'{value[:64]}': '*' may only end a scene, as a prefix pattern such as store_*")
    if len(value) > MAX_SCENE or not body.isprintable() or any(c.isspace() for c in body):
        raise ValueError(f"'{value[:64]}' is not a scene: up to {MAX_SCENE} printable characters, no spaces")
    if not value:
        raise ValueError("a scene cannot be empty")
    return value


def _word(value: str) -> str:
    if not normalize(value):
        raise ValueError("a word or keyword cannot be empty or only spaces")
    if len(value) > MAX_KEYWORD or not value.isprintable():
        raise ValueError(f"'{value[:64]}' is not a word: up to {MAX_KEYWORD} printable characters")
    return value


def _menu_key(value: str) -> str:
    if not value or len(value.encode()) > MAX_MENU_KEY or not value.isprintable():
        raise ValueError(f"a menu key is 1-{MAX_MENU_KEY} bytes of printable characters")
    return value


def _reply(value: str) -> str:
    if not value.strip():
        raise ValueError("a reply cannot be empty")
    if len(value.encode()) > MAX_REPLY_BYTES:
        raise ValueError(f"a reply is at most {MAX_REPLY_BYTES} bytes (UTF-8); this one is {len(value.encode())}")
    if not value.replace("\n", "").isprintable():
        raise ValueError("a reply may hold line breaks but no other control characters")
    return value


def _tags(value: tuple[str, ...]) -> tuple[str, ...]:
    # Checked after the tags themselves (a Field(min_length) would also report a list
    # whose only tag is bad as empty).
    if not value:
        raise ValueError("give at least one tag")
    if len(value) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags (a profile holds no more)")
    return value


def _keywords(value: tuple[str, ...]) -> tuple[str, ...]:
    if not value:
        raise ValueError("give at least one keyword")
    return value


Tag = Annotated[str, AfterValidator(_tag)]
SceneTag = Annotated[str, AfterValidator(_scene_tag)]
Tags = Annotated[tuple[Tag, ...], AfterValidator(_tags)]
SceneTags = Annotated[tuple[SceneTag, ...], AfterValidator(_tags)]
Scene = Annotated[str, AfterValidator(_scene)]
Word = Annotated[str, AfterValidator(_word)]
MenuKey = Annotated[str, AfterValidator(_menu_key)]
Reply = Annotated[str, AfterValidator(_reply)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SceneRule(_Strict):
    scene: Scene
    tags: SceneTags

    def matches(self, scene: str) -> bool:
        if self.scene.endswith("*"):
            return scene.startswith(self.scene[:-1])
        return scene == self.scene


class KeywordRule(_Strict):
    keywords: Annotated[tuple[Word, ...], AfterValidator(_keywords)]
    tags: Tags | None = None
    reply: Reply | None = None

    @model_validator(mode="after")
    def _does_something(self) -> KeywordRule:
        if self.tags is None and self.reply is None:
            raise ValueError("give tags, a reply or both")
        return self


class MenuRule(_Strict):
    key: MenuKey
    tags: Tags


class WechatEvents(_Strict):
    tags_from_qr_scene: tuple[SceneRule, ...] = ()
    tags_from_keyword: tuple[KeywordRule, ...] = ()
    tags_from_menu: tuple[MenuRule, ...] = ()
    # [] turns replies to them off: the words are then ordinary messages.
    opt_out_words: tuple[Word, ...] = DEFAULT_OPT_OUT_WORDS
    opt_out_reply: Reply = DEFAULT_OPT_OUT_REPLY
    opt_in_words: tuple[Word, ...] = DEFAULT_OPT_IN_WORDS
    opt_in_reply: Reply = DEFAULT_OPT_IN_REPLY


def overlaps(events: WechatEvents) -> Iterator[tuple[list[Any], str]]:
    """What no single rule shows: a word that would mean two things, a menu key or a
    scene written in two rules. Each with its path under ``wechat_events``."""
    meaning: dict[str, str] = {}
    places: list[tuple[list[Any], str]] = [(["opt_out_words", i], w) for i, w in enumerate(events.opt_out_words)]
    places += [(["opt_in_words", i], w) for i, w in enumerate(events.opt_in_words)]
    for index, rule in enumerate(events.tags_from_keyword):
        places += [(["tags_from_keyword", index, "keywords", i], w) for i, w in enumerate(rule.keywords)]
    for loc, word in places:
        where = _shown(loc[:-1] if loc[0] == "tags_from_keyword" else loc[:1])
        first = meaning.setdefault(normalize(word), where)
        if first != where:
            yield loc, f"'{word}' is also in {first}; a message can mean one thing only"
    for section, field, written in (
        ("tags_from_menu", "key", [rule.key for rule in events.tags_from_menu]),
        ("tags_from_qr_scene", "scene", [rule.scene for rule in events.tags_from_qr_scene]),
    ):
        for index, value in enumerate(written):
            if value in written[:index]:
                yield (
                    [section, index, field],
                    f"'{value}' is also in {section}[{written.index(value)}]; write its tags in one rule",
                )


def _shown(loc: list[Any]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else ("." if i else "") + part for i, part in enumerate(loc))
