"""Policy files: the sample set loads; every kind of mistake is named precisely."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from gateway.errors import PolicyError
from gateway.policy.loader import load_policy
from gateway.values.domain import Category, Channel
from gateway.values.profiles import Rfm, UserProfile, WeChat
from tests.conftest import POLICIES


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    return target


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def problems(directory: Path) -> list[str]:
    with pytest.raises(PolicyError) as info:
        load_policy(directory)
    return [str(p) for p in info.value.problems]


def test_the_sample_set_is_valid_and_complete() -> None:
    policy = load_policy(POLICIES)
    assert set(policy.business_units) == {"order", "logistics", "growth", "marketing"}
    by_category = {c: sorted(n for n, s in policy.scenarios.items() if s.category is c) for c in Category}
    assert by_category[Category.BASIC] == ["account.security", "delivery.arrived", "order.paid", "order.shipped"]
    assert by_category[Category.REMINDER] == ["back.in.stock", "cart.abandoned", "checkin", "price.drop"]
    assert by_category[Category.MARKETING] == ["coupon.flash", "double11.presale", "new.arrivals"]
    assert policy.categories[Category.MARKETING].caps[0].window.calendar == "day"
    assert policy.categories[Category.REMINDER].caps[1].window.rolling == timedelta(days=7)
    assert policy.arbitrates(Category.MARKETING) and not policy.arbitrates(Category.BASIC)
    assert policy.channels[Channel.WECHAT_MASS].per_user_monthly_limit == 4
    assert set(policy.audiences) == {"mothers.zhejiang", "lapsed.loyal.wechat", "double11.presale"}
    assert len(policy.version) == 12


def test_sample_audiences_parse_and_select() -> None:
    policy = load_policy(POLICIES)
    now = datetime(2026, 11, 1, tzinfo=UTC)
    mother = UserProfile(
        user_id="u-1001",
        wechat=WeChat("oSample0000000000000000001001", following=True),
        tags=("mom_baby", "vip"),
        attributes={"province": "浙江", "city": "杭州"},
    )
    mothers = policy.audience("mothers.zhejiang")
    assert mothers.index_tags() == ("mom_baby", "maternity")
    assert mothers.matches(mother, "loyal", now)
    assert not mothers.matches(msgspec.structs.replace(mother, attributes={"province": "江苏"}), "loyal", now)
    lapsed = msgspec.structs.replace(mother, rfm=Rfm(last_purchase_at=now - timedelta(days=60), orders_in_period=3))
    assert policy.audience("lapsed.loyal.wechat").matches(lapsed, "at_risk", now)
    assert policy.audience("lapsed.loyal.wechat").index_tags() is None
    assert policy.audience("double11.presale").index_tags() == ("double11", "d11_wishlist", "d11_cart")
    assert policy.audience("mothers.zhejiang") is mothers  # parsed once per policy version


def test_version_is_a_content_hash(policy_dir: Path) -> None:
    before = load_policy(policy_dir).version
    assert load_policy(policy_dir).version == before
    edit(policy_dir / "business_units.yaml", "weight: 40", "weight: 41")
    assert load_policy(policy_dir).version != before


CASES = [
    (
        "bad window unit",
        "categories.yaml",
        "{name: weekly, window: week, limit: 3,",
        "{name: weekly, window: 1dya, limit: 3,",
        "categories.yaml: categories.marketing.caps[1].window: unknown unit 'dya'",
    ),
    (
        "unknown key",
        "categories.yaml",
        "    fail_mode: closed\n    dedup_window: 72h",
        "    fail_mode: closed\n    dedup_windw: 72h",
        "categories.yaml: categories.marketing: unknown key 'dedup_windw'",
    ),
    (
        "unknown enum value",
        "scenarios/basic.yaml",
        "channels: [WECHAT_TEMPLATE, APP_PUSH, SMS]\n    content:\n      wechat_template:\n        template_id: TPL_ORDER_PAID_01",
        "channels: [WECHAT_TEMPLATE, APP_PUSH, SMSS]\n    content:\n      wechat_template:\n        template_id: TPL_ORDER_PAID_01",
        "scenarios/basic.yaml: scenarios['order.paid'].channels[2]: Input should be",
    ),
    (
        "unknown scenario granted",
        "business_units.yaml",
        "scenarios: [order.shipped, delivery.arrived]",
        "scenarios: [order.shiped, delivery.arrived]",
        "business_units.yaml: business_units.logistics.scenarios[0]: unknown scenario 'order.shiped'",
    ),
    (
        "marketing on template messages",
        "scenarios/marketing.yaml",
        "channels: [WECHAT_CS, APP_PUSH, SMS]",
        "channels: [WECHAT_TEMPLATE, APP_PUSH, SMS]",
        "marketing may never use WECHAT_TEMPLATE",
    ),
    (
        "undeclared placeholder",
        "scenarios/reminder.yaml",
        'body: "已连续签到 {streak_days} 天"',
        'body: "已连续签到 {streak} 天"',
        "scenarios/reminder.yaml: scenarios.checkin.content.app_push.body: placeholder '{streak}' is not declared",
    ),
    (
        "content placeholder without free text",
        "scenarios/reminder.yaml",
        'body: "已连续签到 {streak_days} 天"',
        'body: "{content.body}"',
        "set free_text: true",
    ),
    (
        "undeclared placeholder in a locale's content",
        "scenarios/basic.yaml",
        'app_push: {title: Your order is on its way, body: "{carrier} {tracking_no}"',
        'app_push: {title: Your order is on its way, body: "{carrier} {tracking}"',
        "scenarios/basic.yaml: scenarios['order.shipped'].content.locales.en.app_push.body: "
        "placeholder '{tracking}' is not declared; declare it in params or optional_params",
    ),
    (
        "a locale's block for a channel the scenario does not list",
        "scenarios/basic.yaml",
        "          app_push: {title: Account security notice",
        "          wechat_cs: {text: hello}\n          app_push: {title: Account security notice",
        "scenarios/basic.yaml: scenarios['account.security'].content.locales.en.wechat_cs: "
        "content for WECHAT_CS in locale 'en', which is not in channels",
    ),
    (
        "not a locale tag",
        "scenarios/basic.yaml",
        "      locales:\n        en:\n          app_push: {title: Your order",
        "      locales:\n        english_uk:\n          app_push: {title: Your order",
        "'english_uk' is not a locale tag; write one such as en, en-GB or zh-Hant-TW",
    ),
    (
        "a locale written twice",
        "scenarios/basic.yaml",
        "      locales:\n        en:\n          app_push: {title: Your order",
        "      locales:\n        EN: {sms: {template_code: SMS_1}}\n        en:\n          app_push: {title: Your order",
        "locale 'en' is also written 'EN': tags ignore case",
    ),
    (
        "missing content block",
        "scenarios/reminder.yaml",
        "    channels: [APP_PUSH]\n",
        "    channels: [APP_PUSH, EMAIL]\n",
        "scenarios.checkin.content: no 'email' block for channel EMAIL",
    ),
    (
        "inline secret",
        "channels.yaml",
        "    secret_env: HERALD_WECHAT_SECRET",
        "    secret: abc123",
        "'secret' looks like a secret written inline",
    ),
    (
        "unknown tier",
        "categories.yaml",
        "per_tier: {champion: 3, hibernating: 1}",
        "per_tier: {champoin: 3, hibernating: 1}",
        "categories.yaml: categories.reminder.caps[0].per_tier: unknown tier 'champoin'",
    ),
    (
        "bad time zone",
        "defaults.yaml",
        "timezone: Asia/Shanghai",
        "timezone: Asia/Shanghia",
        "defaults.yaml: defaults.timezone: unknown time zone 'Asia/Shanghia'",
    ),
    (
        "quiet hours need a period",
        "categories.yaml",
        '{mode: defer, start: "22:00", end: "08:00"}',
        "{mode: defer}",
        "categories.reminder.quiet_hours: mode 'defer' needs start and end",
    ),
    (
        "unquoted time of day",
        "categories.yaml",
        '{mode: defer, start: "22:00", end: "08:00"}',
        "{mode: defer, start: 22:00, end: 08:00}",
        "quote times of day",
    ),
    (
        "yes/no trap",
        "scenarios/basic.yaml",
        'tracking: "{tracking_no}"',
        'no: "{tracking_no}"',
        "YAML reads yes/no/on/off unquoted as true/false",
    ),
    (
        "key written twice",
        "business_units.yaml",
        "    weight: 40\n",
        "    weight: 40\n    weight: 41\n",
        "business_units.yaml: line 25, column 5: not valid YAML: key 'weight' is written twice",
    ),
    (
        "invalid YAML",
        "business_units.yaml",
        "    weight: 40\n",
        "    weight: [40\n",
        "business_units.yaml: line",
    ),
    (
        "unknown provider",
        "channels.yaml",
        "EMAIL: {cost: 0.001, reach: 0.6, provider: smtp}",
        "EMAIL: {cost: 0.001, reach: 0.6, provider: sendgrid}",
        "channels.yaml: channels.EMAIL.provider: unknown provider 'sendgrid'",
    ),
    (
        "bad audience expression",
        "audiences.yaml",
        "tags any [mom_baby, maternity]",
        "tags any [mom_baby maternity]",
        "audiences.yaml: audiences['mothers.zhejiang'].expression: expected ',' or ']' at 20, found 'maternity'; "
        "lists are written [a, b]",
    ),
    (
        "unknown tier in an audience",
        "audiences.yaml",
        "tier = at_risk and",
        "tier = at_rsk and",
        "audiences.yaml: audiences['lapsed.loyal.wechat'].expression: unknown tier 'at_rsk' at 8; "
        "tiers: at_risk, champion, hibernating, loyal, new, potential",
    ),
    (
        "bad audience name",
        "audiences.yaml",
        "  double11.presale:\n",
        "  Double11:\n",
        "audiences.yaml: audiences.Double11 (the key): audience name 'Double11' must start with a lowercase letter",
    ),
    (
        "audience without an expression",
        "audiences.yaml",
        "      tier = at_risk and not purchased within 45d and follows wechat\n",
        "      tier = at_risk and not purchased within 45d and follows wechat\n    expresion: tier = new\n",
        "audiences.yaml: audiences['lapsed.loyal.wechat']: unknown key 'expresion'",
    ),
    (
        "reach out of range",
        "channels.yaml",
        "APP_PUSH: {cost: 0, reach: 0.75, provider: fcm}",
        "APP_PUSH: {cost: 0, reach: 75, provider: fcm}",
        "channels.yaml: channels.APP_PUSH.reach: Input should be less than or equal to 1",
    ),
]


@pytest.mark.parametrize(("name", "file", "old", "new", "needle"), CASES, ids=[c[0] for c in CASES])
def test_each_mistake_is_named(policy_dir: Path, name: str, file: str, old: str, new: str, needle: str) -> None:
    edit(policy_dir / file, old, new)
    found = problems(policy_dir)
    assert any(needle in p for p in found), found
    assert all(p.startswith(str(policy_dir)) for p in found), found


def test_every_problem_is_reported_not_just_the_first(policy_dir: Path) -> None:
    edit(policy_dir / "defaults.yaml", "timezone: Asia/Shanghai", "timezone: Mars/Olympus")
    edit(policy_dir / "business_units.yaml", "weight: 40", "weight: 0")
    assert len(problems(policy_dir)) == 2


def test_a_name_defined_in_two_files(policy_dir: Path) -> None:
    (policy_dir / "extra.yaml").write_text("business_units:\n  order:\n    weight: 1\n", encoding="utf-8")
    found = problems(policy_dir)
    assert any(
        "extra.yaml: business_units.order: already defined in" in p and "business_units.yaml" in p for p in found
    )


def test_an_audience_defined_in_two_files(policy_dir: Path) -> None:
    (policy_dir / "more_audiences.yaml").write_text(
        "audiences:\n  mothers.zhejiang:\n    expression: tags any [mom_baby]\n", encoding="utf-8"
    )
    found = problems(policy_dir)
    assert found == [
        f"{policy_dir}/more_audiences.yaml: audiences['mothers.zhejiang']: already defined in "
        f"{policy_dir}/audiences.yaml"
    ]


def test_empty_and_non_mapping_files(policy_dir: Path) -> None:
    (policy_dir / "empty.yaml").write_text("# nothing\n", encoding="utf-8")
    (policy_dir / "list.yaml").write_text("- a\n- b\n", encoding="utf-8")
    found = problems(policy_dir)
    assert any("empty.yaml: is empty" in p for p in found)
    assert any("list.yaml: must be a mapping of sections" in p for p in found)


def test_missing_directory_and_missing_sections(tmp_path: Path) -> None:
    assert "is not a directory" in problems(tmp_path / "nope")[0]
    (tmp_path / "only.yaml").write_text("defaults:\n  timezone: UTC\n", encoding="utf-8")
    found = problems(tmp_path)
    assert any("scenarios: no file defines this section" in p for p in found)
    assert any("tiers: no file defines the RFM tiers" in p for p in found)


def test_policy_check_command(policy_dir: Path) -> None:
    herald = [sys.executable, "-m", "gateway.cli.main", "policy", "check"]
    ok = subprocess.run([*herald, str(policy_dir)], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("ok: policy ")
    edit(policy_dir / "categories.yaml", "window: week", "window: 1dya")
    bad = subprocess.run([*herald, str(policy_dir)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "categories.marketing.caps[1].window: unknown unit 'dya'" in bad.stderr
    assert "the gateway would refuse this set" in bad.stderr


def test_policy_check_refuses_an_unknown_placeholder_in_a_locales_content(policy_dir: Path) -> None:
    edit(
        policy_dir / "scenarios" / "basic.yaml",
        'body: "{event} ({device})"}\n          email',
        'body: "{event} ({where})"}\n          email',
    )
    herald = [sys.executable, "-m", "gateway.cli.main", "policy", "check", str(policy_dir)]
    bad = subprocess.run(herald, capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr.splitlines()[0] == (
        f"{policy_dir}/scenarios/basic.yaml: scenarios['account.security'].content.locales.en.app_push.body: "
        "placeholder '{where}' is not declared; declare it in params or optional_params"
    )


def test_policy_check_names_a_bad_audience(policy_dir: Path) -> None:
    edit(policy_dir / "audiences.yaml", "tier in [champion, loyal, potential]", "tier in [champ, loyal, potential]")
    herald = [sys.executable, "-m", "gateway.cli.main", "policy", "check", str(policy_dir)]
    bad = subprocess.run(herald, capture_output=True, text=True)
    assert bad.returncode == 1
    assert bad.stderr.splitlines() == [
        f"{policy_dir}/audiences.yaml: audiences['double11.presale'].expression: unknown tier 'champ' at 58; "
        "tiers: at_risk, champion, hibernating, loyal, new, potential",
        "herald: 1 problem(s); the gateway would refuse this set",
    ]


# One run reports schema errors and cross-reference errors together, sorted by file and
# then in file order, and says nothing about names that are defined but invalid.

FOUR_MISTAKES = [
    # A schema error in one scenario (granted to logistics: no "unknown scenario" for it) ...
    (
        "scenarios/basic.yaml",
        "channels: [WECHAT_TEMPLATE, APP_PUSH, SMS]\n    content:\n      wechat_template:\n        template_id: TPL_DELIVERY_ARRIVED_01",
        "channels: [WECHAT_TEMPLATE, APP_PUSH, SMSS]\n    content:\n      wechat_template:\n        template_id: TPL_DELIVERY_ARRIVED_01",
    ),
    # ... does not hide an undeclared placeholder in a valid scenario of the same file.
    (
        "scenarios/basic.yaml",
        'body: "订单 {order_id} 已支付 ¥{amount}"',
        'body: "订单 {order_id} 已支付 ¥{amount_paid}"',
    ),
    (
        "business_units.yaml",
        "scenarios: [order.shipped, delivery.arrived]",
        "scenarios: [order.shiped, delivery.arrived]",
    ),
    ("categories.yaml", "per_tier: {champion: 3, hibernating: 1}", "per_tier: {champoin: 3, hibernating: 1}"),
]

# In the order they must come: files in order, then lines in each file.
FOUR_PROBLEMS = [
    "business_units.yaml: business_units.logistics.scenarios[0]: unknown scenario 'order.shiped'",
    "categories.yaml: categories.reminder.caps[0].per_tier: unknown tier 'champoin'",
    "scenarios/basic.yaml: scenarios['order.paid'].content.app_push.body: placeholder '{amount_paid}' is not declared; declare it in params or optional_params",
    "scenarios/basic.yaml: scenarios['delivery.arrived'].channels[2]: Input should be 'WECHAT_TEMPLATE'",
]


def make_four_mistakes(policy_dir: Path) -> list[str]:
    for file, old, new in FOUR_MISTAKES:
        edit(policy_dir / file, old, new)
    return [f"{policy_dir}/{line}" for line in FOUR_PROBLEMS]


def test_schema_and_cross_reference_problems_in_one_run(policy_dir: Path) -> None:
    expected = make_four_mistakes(policy_dir)
    found = problems(policy_dir)
    assert len(found) == len(expected), found
    for line, start in zip(found, expected, strict=True):
        assert line.startswith(start), found


def test_policy_check_prints_every_problem_in_one_run(policy_dir: Path) -> None:
    expected = make_four_mistakes(policy_dir)
    herald = [sys.executable, "-m", "gateway.cli.main", "policy", "check", str(policy_dir)]
    bad = subprocess.run(herald, capture_output=True, text=True)
    assert bad.returncode == 1
    lines = bad.stderr.splitlines()
    assert len(lines) == len(expected) + 1, bad.stderr
    for line, start in zip(lines[:-1], expected, strict=True):
        assert line.startswith(start), bad.stderr
    assert lines[-1] == f"herald: {len(expected)} problem(s); the gateway would refuse this set"


# Each case makes one entry invalid, while something elsewhere refers to it by name: only
# the entry's own problem is reported. A real unknown name is always added, to show the
# cross-reference checks did run.
INVALID_BUT_DEFINED = [
    (
        "scenario (granted to growth)",
        [("scenarios/reminder.yaml", "  checkin:\n    category: reminder", "  checkin:\n    category: reminde")],
        "scenarios/reminder.yaml: scenarios.checkin.category: Input should be",
    ),
    (
        "business unit (named by a cap)",
        [
            ("business_units.yaml", "weight: 60", "weight: 0"),
            (
                "categories.yaml",
                "{name: weekly, window: 7d, limit: 6}",
                "{name: weekly, window: 7d, limit: 6, bu: growth}",
            ),
        ],
        "business_units.yaml: business_units.growth.weight: Input should be greater than or equal to 1",
    ),
    (
        "channel (listed by scenarios, named by caps)",
        [("channels.yaml", "SMS: {cost: 0.045, reach: 0.98,", "SMS: {cost: 0.045, reach: 98,")],
        "channels.yaml: channels.SMS.reach: Input should be less than or equal to 1",
    ),
    (
        "channel whose key is misspelt",
        [("channels.yaml", "  SMS: {cost: 0.045,", "  SMSS: {cost: 0.045,")],
        "channels.yaml: channels.SMSS (the key): Input should be",
    ),
    (
        "provider (named by channels)",
        [("channels.yaml", "    host: smtp.example.com\n", "")],
        "channels.yaml: providers.smtp.smtp.host: required key is missing",
    ),
    (
        "category (required)",
        [("categories.yaml", "    fail_mode: open", "    fail_mode: opne")],
        "categories.yaml: categories.basic.fail_mode: Input should be 'open' or 'closed'",
    ),
    (
        "tiers (named by caps and scenarios)",
        [("defaults.yaml", "  default: hibernating", "  default: hibernating\n  colour: blue")],
        "defaults.yaml: tiers: unknown key 'colour'",
    ),
]


@pytest.mark.parametrize(("name", "edits", "own_problem"), INVALID_BUT_DEFINED, ids=[c[0] for c in INVALID_BUT_DEFINED])
def test_a_reference_to_an_invalid_entry_is_not_unknown(
    policy_dir: Path, name: str, edits: list[tuple[str, str, str]], own_problem: str
) -> None:
    for file, old, new in edits:
        edit(policy_dir / file, old, new)
    edit(
        policy_dir / "business_units.yaml",
        "scenarios: [order.shipped, delivery.arrived]",
        "scenarios: [order.shiped, delivery.arrived]",
    )
    found = problems(policy_dir)
    expected = [
        f"{policy_dir}/business_units.yaml: business_units.logistics.scenarios[0]: unknown scenario 'order.shiped'",
        f"{policy_dir}/{own_problem}",
    ]
    assert len(found) == 2, found
    for start in expected:
        assert any(line.startswith(start) for line in found), found


# A file that cannot be read, or a section we do not know, may define any name: nothing is
# called unknown or missing then (the business units grant the reminder scenarios), but
# what needs no other entry is still checked, and each file's faults keep their place.
NOT_UNDERSTOOD = [
    (
        "invalid YAML",
        "scenarios/reminder.yaml",
        "    channels: [APP_PUSH]\n",
        "    channels: [APP_PUSH\n",
        "scenarios/reminder.yaml: line ",
    ),
    (
        "not a mapping",
        "scenarios/reminder.yaml",
        "scenarios:\n",
        "- scenarios:\n",
        "scenarios/reminder.yaml: must be a mapping",
    ),
    (
        "misspelt section",
        "scenarios/reminder.yaml",
        "scenarios:\n",
        "scenario:\n",
        "scenarios/reminder.yaml: unknown key 'scenario'",
    ),
]


@pytest.mark.parametrize(
    ("name", "file", "old", "new", "own_problem"), NOT_UNDERSTOOD, ids=[c[0] for c in NOT_UNDERSTOOD]
)
def test_what_is_not_understood_raises_no_false_alarms(
    policy_dir: Path, name: str, file: str, old: str, new: str, own_problem: str
) -> None:
    edit(policy_dir / file, old, new)
    edit(
        policy_dir / "scenarios/basic.yaml",
        'body: "订单 {order_id} 已支付 ¥{amount}"',
        'body: "订单 {order_id} 已支付 ¥{amount_paid}"',
    )
    found = problems(policy_dir)
    placeholder = "scenarios/basic.yaml: scenarios['order.paid'].content.app_push.body: placeholder '{amount_paid}'"
    assert len(found) == 2, found
    assert found[0].startswith(f"{policy_dir}/{placeholder}"), found
    assert found[1].startswith(f"{policy_dir}/{own_problem}"), found
