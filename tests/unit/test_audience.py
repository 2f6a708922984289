"""Audience expressions: parsing, each error, every predicate, precedence, the canonical
text, and the index plan (which must never leave out a user who matches)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from gateway.core.audience import (
    MAX_DEPTH,
    MAX_LENGTH,
    And,
    Attribute,
    Audience,
    AudienceError,
    FollowsWechat,
    HasChannel,
    InteractedWithin,
    Not,
    Or,
    PurchasedWithin,
    Tags,
    Tier,
    parse,
    parse_syntax,
)
from gateway.values.domain import Channel, InteractionKind, Platform, PushProvider
from gateway.values.profiles import DeviceToken, Interaction, Rfm, UserProfile, WeChat

TIERS = ("new", "champion", "loyal", "potential", "at_risk", "hibernating")
NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
OPENID = "oSample0000000000000000001001"


def user(**changes: object) -> UserProfile:
    return UserProfile(user_id="u-1", **changes)  # type: ignore[arg-type]


def matches(text: str, profile: UserProfile, tier: str = "loyal", now: datetime = NOW) -> bool:
    return parse(text, TIERS).matches(profile, tier, now)


# -- parsing ----------------------------------------------------------------------------

VALID = [
    (
        "tags any [mom_baby, vip] and tier in [champion, loyal] and province = 浙江",
        And(
            (
                Tags("any", ("mom_baby", "vip")),
                Tier(("champion", "loyal")),
                Attribute("province", ("浙江",)),
            )
        ),
    ),
    ("tags all [a, b]", Tags("all", ("a", "b"))),
    ("tags none [blocked]", Tags("none", ("blocked",))),
    ("city != 杭州", Attribute("city", ("杭州",), negated=True)),
    ("attr.custom_key = x", Attribute("custom_key", ("x",))),
    ("attr.city = 杭州", Attribute("city", ("杭州",))),  # a known attribute, however written
    ("language in [zh, en]", Attribute("language", ("zh", "en"))),
    ("gender not in [f]", Attribute("gender", ("f",), negated=True)),
    ('attr.store = "Hangzhou West Lake (1)"', Attribute("store", ("Hangzhou West Lake (1)",))),
    ('city = ""', Attribute("city", ("",))),
    ('city in ["杭州，上海"]', Attribute("city", ("杭州，上海",))),  # quoted, it is the value
    ('attr.note = "say \\"hi\\" \\\\ bye"', Attribute("note", ('say "hi" \\ bye',))),
    ("tier = champion", Tier(("champion",))),
    ("tier in [champion]", Tier(("champion",))),
    ("tier != new", Tier(("new",), negated=True)),
    ("tier not in [new, hibernating]", Tier(("new", "hibernating"), negated=True)),
    ("follows wechat", FollowsWechat()),
    ("has channel SMS", HasChannel(Channel.SMS)),
    ("has channel app_push", HasChannel(Channel.APP_PUSH)),
    ("interacted within 30d", InteractedWithin(timedelta(days=30))),
    ("purchased within 12h", PurchasedWithin(timedelta(hours=12))),
    ("purchased within 2w", PurchasedWithin(timedelta(weeks=2))),
    ("not follows wechat", Not(FollowsWechat())),
    ("TAGS ANY [vip] AND Not FOLLOWS WeChat", And((Tags("any", ("vip",)), Not(FollowsWechat())))),
    ("tags any [qr:store_hz01, 双11, a.b-c@d/e]", Tags("any", ("qr:store_hz01", "双11", "a.b-c@d/e"))),
    ("city=杭州", Attribute("city", ("杭州",))),
    ("((tier = new))", Tier(("new",))),
    ("\n  tier = new\n", Tier(("new",))),
]


@pytest.mark.parametrize(("text", "tree"), VALID, ids=[v[0] for v in VALID])
def test_parses(text: str, tree: object) -> None:
    assert parse(text, TIERS) == Audience(tree)  # type: ignore[arg-type]


def test_precedence_not_then_and_then_or() -> None:
    a, b, c = (Tags("any", (name,)) for name in "abc")
    assert parse("tags any [a] or tags any [b] and tags any [c]", TIERS).root == Or((a, And((b, c))))
    assert parse("tags any [a] and tags any [b] or tags any [c]", TIERS).root == Or((And((a, b)), c))
    assert parse("not tags any [a] and tags any [b]", TIERS).root == And((Not(a), b))
    assert parse("not (tags any [a] and tags any [b])", TIERS).root == Not(And((a, b)))
    assert parse("(tags any [a] or tags any [b]) and tags any [c]", TIERS).root == And((Or((a, b)), c))
    # Chains are one node, however they were grouped.
    assert parse("(tags any [a] and tags any [b]) and tags any [c]", TIERS).root == And((a, b, c))
    assert parse("tags any [a] or (tags any [b] or tags any [c])", TIERS).root == Or((a, b, c))
    assert parse("not not tags any [a]", TIERS).root == Not(Not(a))


ERRORS = [
    # text, what the message says, column
    ("tags any [a] and tier in [champ]", "unknown tier 'champ' at 27; tiers: at_risk, champion, hibernating", 27),
    ("tags any vip", "expected a list like [a, b] after 'any' at 10, found 'vip'", 10),
    ("tags any []", "empty list at 10; name at least one tag", 10),
    ("tags any [a, ]", "expected a tag after ',' at 14, found ']'", 14),
    ("tags any [a,, b]", "expected a tag after ',' at 13, found ','", 13),
    ("tags any [a b]", "expected ',' or ']' at 13, found 'b'; lists are written [a, b]", 13),
    ("tags any [a", "expected ',' or ']' at 12, found the end", 12),
    ("tags any [vip, vip]", "'vip' is listed twice at 16; name each tag once", 16),
    ('tags any ["a b"]', "'a b' at 11 is not a tag: 1-64 letters (any script)", 11),
    ("tags any [" + "x" * 65 + "]", "is not a tag", 11),
    ("tags some [a]", "expected any, all or none after 'tags' at 6, found 'some'", 6),
    ("tier is new", "expected =, !=, in or not in after 'tier' at 6, found 'is'", 6),
    ("tier not [new]", "expected 'in' after 'not' at 10, found '['; write: tier not in [a, b]", 10),
    ("tier = ", "expected a tier after '=' at 8, found the end", 8),
    ("tier in [new, champ]", "unknown tier 'champ' at 15", 15),
    ("provnce = 浙江", "unknown condition 'provnce' at 1 (did you mean 'province'?); a condition starts with tags", 1),
    ("vip", "unknown condition 'vip' at 1; a condition starts with tags, tier, province", 1),
    ("attr.Level = 1", "attribute name 'Level' at 1 must be a lowercase name", 1),
    ("attr. = 1", "attribute name '' at 1 must be a lowercase name", 1),
    ("city 杭州", "expected =, !=, in or not in after 'city' at 6, found '杭州'", 6),
    ("city !杭州", "unexpected '!' at 6; write != for 'not equal'", 6),
    ('city = "杭州', 'unclosed string at 8; end it with "', 8),
    ("city in [杭州，上海]", "full-width '，' at 12; write ','", 12),
    ("tags any【vip】", "full-width '【' at 9; write '['", 9),
    ("city = “New York”", "full-width '“' at 8; write '\"'", 8),
    ("follows weixin", "expected 'wechat' after 'follows' at 9, found 'weixin'; write: follows wechat", 9),
    ("has SMS", "expected 'channel' after 'has' at 5, found 'SMS'; write: has channel SMS", 5),
    ("has channel SMSS", "unknown channel 'SMSS' at 13; channels: WECHAT_TEMPLATE, WECHAT_CS, WECHAT_MASS, SMS", 13),
    ("interacted 30d", "expected 'within' after 'interacted' at 12, found '30d'; write: interacted within 30d", 12),
    ("interacted within 30days", "bad duration '30days' at 19: unknown unit 'days'", 19),
    ("purchased within 0d", "bad duration '0d' at 18: '0d' is zero", 18),
    ("purchased within soon", "bad duration 'soon' at 18: not a duration", 18),
    ("and tier = new", "expected a condition at 1, found 'and'", 1),
    ("tier = new and", "expected a condition after 'and' at 15, found the end", 15),
    ("tier = new or or tier = loyal", "expected a condition after 'or' at 15, found 'or'", 15),
    ("not", "expected a condition after 'not' at 4, found the end", 4),
    ("tier = new city = 杭州", "expected and, or or the end at 12, found 'city'; join conditions with and / or", 12),
    ("city = New York", "found 'York'; join conditions with and / or; quote a value with spaces: \"New York\"", 12),
    ("city in [New York]", "expected ',' or ']' at 14, found 'York'; lists are written [a, b]; quote a value", 14),
    ("(tier = new", "expected ')' at 12 to close the '(' at 1, found the end", 12),
    ("tier = new)", "unexpected ')' at 11; it closes no '('", 11),
    ("()", "expected a condition after '(' at 2, found ')'", 2),
    ("", "expression is empty; write a condition such as: tags any [vip]", None),
    ("   \n", "expression is empty", None),
    (
        "not " * MAX_DEPTH + "(tier = new)",
        f"nested more than {MAX_DEPTH} deep at {4 * MAX_DEPTH + 1}",
        4 * MAX_DEPTH + 1,
    ),
    ("(" * (MAX_DEPTH + 1) + "tier = new" + ")" * (MAX_DEPTH + 1), "nested more than 20 deep at 21; flatten it", 21),
    ("tier = new or " * 200, "expression is 2800 characters long; at most 2000", None),
]


@pytest.mark.parametrize(("text", "message", "column"), ERRORS, ids=[e[1][:50] for e in ERRORS])
def test_each_error_says_where_and_what(text: str, message: str, column: int | None) -> None:
    with pytest.raises(AudienceError) as info:
        parse(text, TIERS)
    assert message in str(info.value)
    assert info.value.column == column
    assert isinstance(info.value, ValueError)


def test_limits_are_inclusive() -> None:
    deep = "not " * (MAX_DEPTH - 1) + "(tier = new)"  # 19 nots and a parenthesis: 20 deep
    assert parse(deep, TIERS).text == "not " * (MAX_DEPTH - 1) + "tier = new"
    long = "tier = new or " * 142 + "tier = loyal" + " " * (MAX_LENGTH - 142 * 14 - 12)
    assert len(long) == MAX_LENGTH
    parse(long, TIERS)


def test_tiers_are_checked_only_when_given() -> None:
    with pytest.raises(AudienceError, match="unknown tier 'vip' at 8; tiers: none are defined"):
        parse("tier = vip", ())
    assert parse_syntax("tier = vip").root == Tier(("vip",))
    with pytest.raises(AudienceError, match="expected a list"):
        parse_syntax("tier in vip")


def test_long_tokens_are_shortened_in_messages() -> None:
    with pytest.raises(AudienceError) as info:
        parse("x" * 500, TIERS)
    assert len(str(info.value)) < 300 and "xxx..." in str(info.value)


# -- evaluation -------------------------------------------------------------------------


def test_tags() -> None:
    vip_mom = user(tags=("mom_baby", "vip"))
    assert matches("tags any [vip, blocked]", vip_mom)
    assert not matches("tags any [blocked]", vip_mom)
    assert matches("tags all [vip, mom_baby]", vip_mom)
    assert not matches("tags all [vip, blocked]", vip_mom)
    assert matches("tags none [blocked]", vip_mom)
    assert not matches("tags none [blocked, vip]", vip_mom)
    assert not matches("tags any [vip]", user())
    assert matches("tags none [vip]", user())


def test_tier_is_the_one_passed_in() -> None:
    profile = user()
    assert matches("tier = champion", profile, tier="champion")
    assert not matches("tier = champion", profile, tier="loyal")
    assert matches("tier in [champion, loyal]", profile, tier="loyal")
    assert matches("tier != new", profile, tier="loyal")
    assert not matches("tier not in [loyal, new]", profile, tier="loyal")


def test_attributes_and_a_missing_one_reads_as_empty() -> None:
    hz = user(attributes={"province": "浙江", "city": "杭州", "member_level": "gold"})
    assert matches("province = 浙江 and city = 杭州", hz)
    assert not matches("city != 杭州", hz)
    assert matches("attr.member_level in [gold, platinum]", hz)
    assert matches("language not in [en]", hz)  # no language: not in any list
    assert not matches("language = zh", hz)
    assert matches('language = ""', hz)
    assert not matches('city = ""', hz)
    assert matches("city != 上海", user())
    assert not matches("province = 浙江", user(attributes={"province": "江苏"}))


def test_follows_wechat() -> None:
    assert matches("follows wechat", user(wechat=WeChat(OPENID, following=True)))
    assert not matches("follows wechat", user(wechat=WeChat(OPENID, following=False)))
    assert not matches("follows wechat", user())


TOKEN = DeviceToken("sample-fcm-token", Platform.ANDROID, PushProvider.FCM)
HAS_CHANNEL = [
    # profile, the channels it has a contact for
    (user(), set()),
    (user(phone="+8613900001001"), {Channel.SMS}),
    (user(email="lin.wei@example.com"), {Channel.EMAIL}),
    (user(device_tokens=(TOKEN,)), {Channel.APP_PUSH}),
    (user(wechat=WeChat(OPENID, following=True)), {Channel.WECHAT_TEMPLATE, Channel.WECHAT_MASS, Channel.WECHAT_CS}),
    (user(wechat=WeChat(OPENID, following=False)), {Channel.WECHAT_CS}),
    (user(wechat=WeChat("", following=True)), set()),
]


@pytest.mark.parametrize(("profile", "channels"), HAS_CHANNEL)
def test_has_channel(profile: UserProfile, channels: set[Channel]) -> None:
    for channel in Channel:
        assert matches(f"has channel {channel}", profile) is (channel in channels), channel


def test_interacted_within_reads_the_latest_interaction() -> None:
    def at(*ages: timedelta) -> UserProfile:
        return user(interactions=tuple(Interaction(InteractionKind.MENU_CLICK, NOW - age) for age in ages))

    assert matches("interacted within 30d", at(timedelta(days=2), timedelta(days=40)))
    assert matches("interacted within 30d", at(timedelta(days=30)))  # the bound is included
    assert not matches("interacted within 30d", at(timedelta(days=30, seconds=1)))
    assert not matches("interacted within 12h", at(timedelta(hours=13), timedelta(days=3)))
    assert not matches("interacted within 2w", user())


def test_purchased_within_reads_the_last_purchase() -> None:
    assert matches("purchased within 90d", user(rfm=Rfm(last_purchase_at=NOW - timedelta(days=90))))
    assert not matches("purchased within 90d", user(rfm=Rfm(last_purchase_at=NOW - timedelta(days=91))))
    assert not matches("purchased within 90d", user())  # never purchased
    assert matches("not purchased within 90d", user())


def test_and_or_not_and_their_precedence() -> None:
    mom = user(tags=("mom_baby",), attributes={"province": "浙江"})
    assert matches("tags any [vip] or tags any [mom_baby] and province = 浙江", mom)
    # not binds tighter than and, and than or: (not vip) and mom_baby
    assert matches("not tags any [vip] and tags any [mom_baby]", mom)
    assert not matches("not (tags any [vip] or tags any [mom_baby])", mom)
    # (vip or mom_baby) and 江苏 is false; vip or (mom_baby and 江苏) too; mom_baby or (vip and 江苏) true
    assert not matches("(tags any [vip] or tags any [mom_baby]) and province = 江苏", mom)
    assert matches("tags any [mom_baby] or tags any [vip] and province = 江苏", mom)


def test_the_clock_is_the_one_passed_in() -> None:
    bought = user(rfm=Rfm(last_purchase_at=datetime(2026, 10, 1, tzinfo=UTC)))
    audience = parse("purchased within 30d", TIERS)
    assert audience.matches(bought, "loyal", datetime(2026, 10, 31, tzinfo=UTC))
    assert not audience.matches(bought, "loyal", datetime(2026, 11, 1, tzinfo=UTC))


# -- the canonical text -----------------------------------------------------------------

CANONICAL = [
    ("TAGS Any [vip,mom_baby]  AND  tier IN [champion]", "tags any [vip, mom_baby] and tier = champion"),
    ("attr.city=杭州", "city = 杭州"),
    ("has channel sms or follows WECHAT", "has channel SMS or follows wechat"),
    ("purchased within 14d and interacted within 168h", "purchased within 2w and interacted within 1w"),
    ("(tags any [a] or tags any [b]) and not (city = x or city = y)", None),
    ("tags any [a] or tags any [b] and tags any [c]", None),
    ("((tags any [a]) and (tags any [b]))", "tags any [a] and tags any [b]"),
    ("not not (tier = new)", "not not tier = new"),
    ('attr.store = "West Lake, 1" or attr.quote = "a \\"b\\" \\\\" or city = ""', None),
    ('attr.brand = "and"', "attr.brand = and"),
    ('city in ["杭州，上海", 北京]', None),  # a full-width comma stays quoted
]


@pytest.mark.parametrize(("text", "canonical"), CANONICAL, ids=[c[0] for c in CANONICAL])
def test_text_is_canonical_and_round_trips(text: str, canonical: str | None) -> None:
    audience = parse(text, TIERS)
    assert audience.text == (canonical or text)
    assert str(audience) == audience.text
    assert parse(audience.text, TIERS) == audience


def test_any_attribute_value_prints_so_that_it_reads_back() -> None:
    rng = random.Random(7)
    pool = 'ab 杭州"\\()[],=!，【“\n\t'
    for _ in range(500):
        value = "".join(rng.choice(pool) for _ in range(rng.randint(0, 6)))
        audience = Audience(Attribute("note", (value,), negated=rng.random() < 0.5))
        assert parse(audience.text, TIERS) == audience, (value, audience.text)


# -- the index plan ---------------------------------------------------------------------

PLANS = [
    ("tags any [a, b] and tier = loyal", ("a", "b")),
    ("tags all [a, b]", ("a",)),
    ("tags none [a]", None),
    ("tier = loyal", None),
    ("tags any [a, b, c] and tags all [d, e]", ("d",)),  # the narrowest part
    ("tags any [a] or tags all [b, c]", ("a", "b")),
    ("tags any [a, b] or tags any [b, c]", ("a", "b", "c")),
    ("tags any [a] or city = 杭州", None),  # a user in 杭州 may carry no tag
    ("tags any [a] and (tags any [b] or follows wechat)", ("a",)),
    ("not tags none [a, b]", ("a", "b")),
    ("not tags any [a]", None),
    ("not (tags none [a] or tier = new)", ("a",)),
    ("not (tags none [a] and tags none [b])", ("a", "b")),
    ("not (tags none [a] and tier = new)", None),
    ("not not tags any [a]", ("a",)),
]


@pytest.mark.parametrize(("text", "plan"), PLANS, ids=[p[0] for p in PLANS])
def test_index_plan(text: str, plan: tuple[str, ...] | None) -> None:
    assert parse(text, TIERS).index_tags() == plan


# Random expressions and profiles over a small vocabulary, so that users often match.
# Each expression is built here with its own meaning (a function over a profile), and
# written with only the parentheses precedence needs (or, sometimes, more), so the
# parser, the evaluation, the canonical text and the plan are all checked against it.

VOCAB = ("a", "b", "c", "d", "e")
CITIES = ("杭州", "上海", "北京")
AGES = (timedelta(hours=1), timedelta(days=3), timedelta(days=20), timedelta(days=100))


@dataclass(frozen=True)
class Case:
    text: str
    holds: Callable[[UserProfile, str], bool]
    level: int  # 0 or: 1 and: 2 not/atom


def _pick(rng: random.Random, pool: tuple[str, ...]) -> list[str]:
    return rng.sample(pool, rng.randint(1, 3))


def _word(rng: random.Random, word: str) -> str:
    return rng.choice((word, word.upper(), word.capitalize()))


def _atom(rng: random.Random) -> Case:
    kind = rng.randrange(8)
    if kind < 3:
        mode = ("any", "all", "none")[kind]
        tags = _pick(rng, VOCAB)
        tests = {
            "any": lambda p, tags=tags: any(t in p.tags for t in tags),
            "all": lambda p, tags=tags: all(t in p.tags for t in tags),
            "none": lambda p, tags=tags: not any(t in p.tags for t in tags),
        }
        test = tests[mode]
        return Case(f"{_word(rng, 'tags')} {_word(rng, mode)} [{', '.join(tags)}]", lambda p, t: test(p), 2)
    if kind == 3:
        tiers = _pick(rng, TIERS)
        return Case(f"tier in [{', '.join(tiers)}]", lambda p, t: t in tiers, 2)
    if kind == 4:
        city = rng.choice(CITIES)
        if rng.random() < 0.5:
            return Case(f"city = {city}", lambda p, t: p.attributes.get("city") == city, 2)
        return Case(f"city != {city}", lambda p, t: p.attributes.get("city") != city, 2)
    if kind == 5:
        return Case("follows wechat", lambda p, t: p.wechat is not None and p.wechat.following, 2)
    if kind == 6:
        return Case("has channel SMS", lambda p, t: p.phone != "", 2)
    days = rng.choice((1, 7, 30))
    return Case(
        f"interacted within {days}d",
        lambda p, t: any(NOW - i.at <= timedelta(days=days) for i in p.interactions),
        2,
    )


def _group(rng: random.Random, case: Case, level: int) -> str:
    """``case`` as an operand where ``level`` binds: parenthesised when needed, and
    now and then when not."""
    return f"({case.text})" if case.level < level or rng.random() < 0.1 else case.text


def expression(rng: random.Random, depth: int = 0) -> Case:
    roll = rng.random()
    if depth >= 4 or roll < 0.35:
        return _atom(rng)
    if roll < 0.45:
        inner = expression(rng, depth + 1)
        return Case(f"{_word(rng, 'not')} {_group(rng, inner, 2)}", lambda p, t: not inner.holds(p, t), 2)
    parts = [expression(rng, depth + 1) for _ in range(rng.randint(2, 3))]
    if roll < 0.75:
        text = f" {_word(rng, 'and')} ".join(_group(rng, part, 2) for part in parts)
        return Case(text, lambda p, t: all(part.holds(p, t) for part in parts), 1)
    text = f" {_word(rng, 'or')} ".join(_group(rng, part, 1) for part in parts)
    return Case(text, lambda p, t: any(part.holds(p, t) for part in parts), 0)


def random_user(rng: random.Random) -> tuple[UserProfile, str]:
    attributes = {"city": rng.choice(CITIES)} if rng.random() < 0.7 else {}
    wechat = None if rng.random() < 0.3 else WeChat(OPENID, following=rng.random() < 0.6)
    interactions = tuple(
        Interaction(InteractionKind.USER_MESSAGE, NOW - rng.choice(AGES)) for _ in range(rng.randint(0, 2))
    )
    profile = user(
        tags=tuple(sorted(rng.sample(VOCAB, rng.randint(0, 3)))),
        attributes=attributes,
        wechat=wechat,
        phone="+8613900001001" if rng.random() < 0.5 else "",
        interactions=interactions,
    )
    return profile, rng.choice(TIERS)


def test_random_expressions_evaluate_print_and_plan_safely() -> None:
    rng = random.Random(20261111)
    users = [random_user(rng) for _ in range(60)]
    planned = matched_with_plan = 0
    for _ in range(400):
        case = expression(rng)
        audience = parse(case.text, TIERS)
        again = parse(audience.text, TIERS)
        assert again == audience, case.text
        plan = audience.index_tags()
        planned += plan is not None
        for profile, tier in users:
            expected = case.holds(profile, tier)
            assert audience.matches(profile, tier, NOW) is expected, (case.text, profile, tier)
            assert again.matches(profile, tier, NOW) is expected
            if expected and plan is not None:
                # The runner reads only these tags' members: this user must be among them.
                assert set(plan) & set(profile.tags), (case.text, plan, profile.tags)
                matched_with_plan += 1
    # The generator does reach the cases that matter.
    assert planned > 80 and matched_with_plan > 500, (planned, matched_with_plan)
