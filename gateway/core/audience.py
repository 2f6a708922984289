"""Audiences: who a campaign targets, as a small expression over user profiles.

    tags any [mom_baby, vip] and tier in [champion, loyal] and province = 浙江

``parse`` reads the text into an ``Audience``, a tree of frozen nodes (in
``gateway.core.audience_nodes``, re-exported here), or raises
``AudienceError`` saying where (a column, counted in characters from 1) and what to
write instead. Everything here is pure: the user's tier and the time are passed in.
docs/audiences.md is the operators' reference.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection
from datetime import timedelta
from typing import NamedTuple, NoReturn

from gateway.core.audience_nodes import (
    FULL_WIDTH,
    FULL_WIDTH_RE,
    TAG_MODES,
    WORD_CHARS,
    And,
    Attribute,
    Audience,
    FollowsWechat,
    HasChannel,
    InteractedWithin,
    Node,
    Not,
    Or,
    PurchasedWithin,
    Tags,
    Tier,
)
from gateway.durations import parse_duration
from gateway.values.domain import Channel
from gateway.values.profiles import ATTRIBUTE_KEY_RE, KNOWN_ATTRIBUTES, TAG_RE

__all__ = [
    "MAX_DEPTH",
    "MAX_LENGTH",
    "And",
    "Attribute",
    "Audience",
    "AudienceError",
    "FollowsWechat",
    "HasChannel",
    "InteractedWithin",
    "Node",
    "Not",
    "Or",
    "PurchasedWithin",
    "Tags",
    "Tier",
    "parse",
    "parse_syntax",
]

MAX_LENGTH = 2000
# Parentheses and `not`s inside each other; `a and b and c` is flat whatever its length.
MAX_DEPTH = 20

# The words a condition starts with, as error messages list them.
STARTS = "tags, tier, province, city, language, gender, attr.<name>, follows, has, interacted, purchased, not or ("
_CONDITION_WORDS = ("tags", "tier", *KNOWN_ATTRIBUTES, "follows", "has", "interacted", "purchased", "not")


class AudienceError(ValueError):
    """An expression that does not parse. ``column`` counts characters from 1 (None:
    the whole text); ``token`` is the text found there ("" at the end)."""

    def __init__(self, message: str, column: int | None = None, token: str | None = None) -> None:
        super().__init__(message)
        self.column = column
        self.token = token


_TOKEN_RE = re.compile(
    rf"""(?P<space>\s+)
      | (?P<punct>!=|[()\[\],=])
      | (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<word>{WORD_CHARS}+)""",
    re.VERBOSE | re.DOTALL,
)
_ESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)


class _Token(NamedTuple):
    kind: str  # word, string, end, or the punctuation itself: ( ) [ ] , = !=
    text: str  # as written
    value: str  # a string's content, unescaped; else the text
    column: int  # from 1

    def found(self) -> str:
        if self.kind == "end":
            return "the end"
        return f"'{_shown(self.text)}'"

    def keyword(self, *words: str) -> bool:
        return self.kind == "word" and self.text.lower() in words


def _shown(text: str) -> str:
    return text if len(text) <= 40 else text[:40] + "..."


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            column = pos + 1
            if text[pos] == '"':
                raise AudienceError(f'unclosed string at {column}; end it with "', column, text[pos : pos + 40])
            raise AudienceError(f"unexpected '{text[pos]}' at {column}; write != for 'not equal'", column, text[pos])
        kind = match.lastgroup or ""
        written = match.group()
        if kind == "word":
            wide = FULL_WIDTH_RE.search(written)
            if wide is not None:
                column = pos + wide.start() + 1
                raise AudienceError(
                    f"full-width '{wide.group()}' at {column}; write '{FULL_WIDTH[wide.group()]}' "
                    "(or put the value in double quotes if it is part of it)",
                    column,
                    wide.group(),
                )
            out.append(_Token("word", written, written, pos + 1))
        elif kind == "string":
            out.append(_Token("string", written, _ESCAPE_RE.sub(r"\1", written[1:-1]), pos + 1))
        elif kind == "punct":
            out.append(_Token(written, written, written, pos + 1))
        pos = match.end()
    out.append(_Token("end", "", "", len(text) + 1))
    return out


class _Parser:
    """Recursive descent: or < and < not < a condition or ( ... )."""

    def __init__(self, text: str, tiers: Collection[str] | None) -> None:
        if len(text) > MAX_LENGTH:
            raise AudienceError(
                f"expression is {len(text)} characters long; at most {MAX_LENGTH}: "
                "shorten it, or tag the users and select the tag"
            )
        if not text.strip():
            raise AudienceError("expression is empty; write a condition such as: tags any [vip]")
        self._tokens = _tokens(text)
        self._at = 0
        self._depth = 0
        self._tiers = tiers

    def parse(self) -> Node:
        node = self._or(None)
        token = self._peek()
        if token.kind == ")":
            self._fail(token, f"unexpected ')' at {token.column}; it closes no '('")
        if token.kind != "end":
            # city = New York: the value was meant to go on
            quote = '; quote a value with spaces: "New York"' if self._tokens[self._at - 2].kind in ("=", "!=") else ""
            self._fail(
                token,
                f"expected and, or or the end at {token.column}, found {token.found()}; "
                f"join conditions with and / or{quote}",
            )
        return node

    def _peek(self) -> _Token:
        return self._tokens[self._at]

    def _next(self) -> _Token:
        token = self._tokens[self._at]
        if token.kind != "end":
            self._at += 1
        return token

    @staticmethod
    def _fail(token: _Token, message: str) -> NoReturn:
        raise AudienceError(message, token.column, token.text)

    def _enter(self, token: _Token) -> None:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            self._fail(
                token,
                f"nested more than {MAX_DEPTH} deep at {token.column}; flatten it (a and b and c needs no parentheses)",
            )

    def _or(self, after: _Token | None) -> Node:
        parts = [self._and(after)]
        while self._peek().keyword("or"):
            parts.append(self._and(self._next()))
        return parts[0] if len(parts) == 1 else Or(_flat(parts, Or))

    def _and(self, after: _Token | None) -> Node:
        parts = [self._not(after)]
        while self._peek().keyword("and"):
            parts.append(self._not(self._next()))
        return parts[0] if len(parts) == 1 else And(_flat(parts, And))

    def _not(self, after: _Token | None) -> Node:
        token = self._peek()
        if not token.keyword("not"):
            return self._condition(after)
        self._next()
        self._enter(token)
        inner = self._not(token)
        self._depth -= 1
        return Not(inner)

    def _condition(self, after: _Token | None) -> Node:
        token = self._next()
        if token.kind == "(":
            self._enter(token)
            node = self._or(token)
            close = self._next()
            if close.kind != ")":
                self._fail(
                    close,
                    f"expected ')' at {close.column} to close the '(' at {token.column}, found {close.found()}",
                )
            self._depth -= 1
            return node
        word = token.text.lower() if token.kind == "word" else ""
        if word == "tags":
            return self._tags()
        if word == "tier":
            tiers, negated = self._choice(token, "tier")
            return Tier(tiers, negated)
        if word in KNOWN_ATTRIBUTES or word.startswith("attr."):
            return self._attribute(token)
        if word == "follows":
            self._expect(token, "wechat", "follows wechat")
            return FollowsWechat()
        if word == "has":
            return self._channel(self._expect(token, "channel", "has channel SMS"))
        if word == "interacted":
            return InteractedWithin(self._duration(self._expect(token, "within", "interacted within 30d")))
        if word == "purchased":
            return PurchasedWithin(self._duration(self._expect(token, "within", "purchased within 90d")))
        where = f" after '{after.text}'" if after is not None else ""
        if word and word not in ("and", "or"):
            guesses = difflib.get_close_matches(word, _CONDITION_WORDS, n=1, cutoff=0.75)
            hint = f" (did you mean '{guesses[0]}'?)" if guesses else ""
            self._fail(
                token, f"unknown condition {token.found()} at {token.column}{hint}; a condition starts with {STARTS}"
            )
        self._fail(
            token,
            f"expected a condition{where} at {token.column}, found {token.found()}; a condition starts with {STARTS}",
        )

    def _expect(self, after: _Token, word: str, example: str) -> _Token:
        token = self._next()
        if not token.keyword(word):
            self._fail(
                token,
                f"expected '{word}' after '{after.text}' at {token.column}, found {token.found()}; write: {example}",
            )
        return token

    def _value(self, after: _Token, what: str) -> _Token:
        token = self._next()
        if token.kind not in ("word", "string"):
            self._fail(
                token,
                f"expected a {what} after '{after.text}' at {token.column}, found {token.found()}; "
                'quote a value with spaces or brackets: "New York"',
            )
        return token

    def _list(self, after: _Token, what: str) -> list[_Token]:
        opening = self._next()
        if opening.kind != "[":
            self._fail(
                opening,
                f"expected a list like [a, b] after '{after.text}' at {opening.column}, found {opening.found()}",
            )
        if self._peek().kind == "]":
            self._fail(opening, f"empty list at {opening.column}; name at least one {what}")
        items: dict[str, _Token] = {}
        separator = opening
        while True:
            item = self._value(separator, what)
            if item.value in items:
                self._fail(item, f"'{_shown(item.value)}' is listed twice at {item.column}; name each {what} once")
            items[item.value] = item
            separator = self._next()
            if separator.kind == "]":
                return list(items.values())
            if separator.kind != ",":
                quote = "" if what == "tag" else '; quote a value with spaces: "New York"'
                self._fail(
                    separator,
                    f"expected ',' or ']' at {separator.column}, found {separator.found()}; "
                    f"lists are written [a, b]{quote}",
                )

    def _choice(self, subject: _Token, what: str) -> tuple[tuple[str, ...], bool]:
        """``= v``, ``!= v``, ``in [..]`` or ``not in [..]``: the values, and whether negated."""
        operator = self._next()
        if operator.kind in ("=", "!="):
            values = [self._value(operator, what)]
        elif operator.keyword("in"):
            values = self._list(operator, what)
        elif operator.keyword("not"):
            values = self._list(self._expect(operator, "in", f"{subject.text} not in [a, b]"), what)
        else:
            self._fail(
                operator,
                f"expected =, !=, in or not in after '{subject.text}' at {operator.column}, found {operator.found()}",
            )
        if what == "tier" and self._tiers is not None:
            for token in values:
                if token.value not in self._tiers:
                    known = ", ".join(sorted(self._tiers)) or "none are defined"
                    self._fail(token, f"unknown tier '{_shown(token.value)}' at {token.column}; tiers: {known}")
        return tuple(t.value for t in values), operator.kind == "!=" or operator.keyword("not")

    def _tags(self) -> Tags:
        mode = self._next()
        if not mode.keyword(*TAG_MODES):
            self._fail(
                mode,
                f"expected any, all or none after 'tags' at {mode.column}, found {mode.found()}; "
                "write e.g. tags any [vip, mom_baby]",
            )
        items = self._list(mode, "tag")
        for item in items:
            if not TAG_RE.fullmatch(item.value):
                self._fail(
                    item,
                    f"'{_shown(item.value)}' at {item.column} is not a tag: "
                    "1-64 letters (any script), digits and _ - . : @ / (no spaces)",
                )
        tag_mode = next(m for m in TAG_MODES if m == mode.text.lower())
        return Tags(tag_mode, tuple(item.value for item in items))

    def _attribute(self, subject: _Token) -> Attribute:
        key = subject.text.lower()
        if key.startswith("attr."):
            key = subject.text[len("attr.") :]
            if not ATTRIBUTE_KEY_RE.fullmatch(key):
                self._fail(
                    subject,
                    f"attribute name '{_shown(key)}' at {subject.column} must be a lowercase name, "
                    "[a-z][a-z0-9_]{0,31}, e.g. attr.member_level",
                )
        values, negated = self._choice(subject, "value")
        return Attribute(key, values, negated)

    def _channel(self, after: _Token) -> HasChannel:
        token = self._value(after, "channel")
        try:
            return HasChannel(Channel(token.value.upper()))
        except ValueError:
            self._fail(
                token, f"unknown channel '{_shown(token.value)}' at {token.column}; channels: {', '.join(Channel)}"
            )

    def _duration(self, after: _Token) -> timedelta:
        token = self._value(after, "duration")
        try:
            return parse_duration(token.value)
        except ValueError as exc:
            self._fail(token, f"bad duration '{_shown(token.value)}' at {token.column}: {exc}")


def _flat(parts: list[Node], kind: type[And] | type[Or]) -> tuple[Node, ...]:
    """``(a and b) and c`` is ``a and b and c``: one node, so the text prints back the same."""
    out: list[Node] = []
    for part in parts:
        out.extend(part.parts if isinstance(part, kind) else (part,))
    return tuple(out)


def parse(text: str, tiers: Collection[str]) -> Audience:
    """Read an audience expression; tier names must be among ``tiers``."""
    return Audience(_Parser(text, tiers).parse())


def parse_syntax(text: str) -> Audience:
    """Read an audience expression without checking tier names: for when the tiers are
    not known yet (a policy file is checked before the files are merged)."""
    return Audience(_Parser(text, None).parse())
