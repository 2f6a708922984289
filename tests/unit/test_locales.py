"""Which content a user's locale picks, and rendering in it."""

from __future__ import annotations

import pytest

from gateway.core.locales import fallbacks, pick
from gateway.core.render import content_locale, render
from gateway.policy.loader import load_policy
from gateway.values.domain import Channel
from tests.conftest import POLICIES

POLICY = load_policy(POLICIES)
SHIPPED = {"order_id": "O-1", "carrier": "SF", "tracking_no": "T1"}


def test_fallbacks_go_subtag_by_subtag() -> None:
    assert fallbacks("zh-Hant-TW") == ["zh-hant-tw", "zh-hant", "zh"]
    assert fallbacks("en") == ["en"]
    assert fallbacks("") == []


@pytest.mark.parametrize(
    ("locale", "picked"),
    [
        ("en-GB", "en-GB"),  # exact
        ("EN-gb", "en-GB"),  # whatever the case
        ("en-US", "en"),  # language only
        ("en-GB-oxendict", "en-GB"),
        ("en", "en"),
        ("fr-FR", None),  # the default
        ("", None),
    ],
)
def test_exact_then_shorter_then_the_default(locale: str, picked: str | None) -> None:
    assert pick({"en-gb": "en-GB", "en": "en"}, locale) == picked


def test_render_in_the_users_locale_with_the_default_block_where_the_locale_has_none() -> None:
    english = render(POLICY, "order.shipped", Channel.APP_PUSH, SHIPPED, None, "en-GB")
    assert english["title"] == "Your order is on its way"
    assert render(POLICY, "order.shipped", Channel.APP_PUSH, SHIPPED, None, "")["title"] == "订单已发货"
    assert render(POLICY, "order.shipped", Channel.SMS, SHIPPED, None, "en")["template_code"] == "SMS_100012"
    # No English WeChat template: the default one, whole.
    template = render(POLICY, "order.shipped", Channel.WECHAT_TEMPLATE, SHIPPED, None, "en-GB")
    assert template["template_id"] == "TPL_ORDER_SHIPPED_01" and template["fields"]["character_string1"] == "O-1"
    assert content_locale(POLICY, "order.shipped", "en-AU") == "en"
    assert content_locale(POLICY, "order.paid", "en-AU") is None  # a scenario without locales


def test_templates_are_compiled_once_per_policy() -> None:
    """Deliveries render on the hot path: what depends on the policy alone is kept."""
    from gateway.core.render import template

    assert template(POLICY, "order.shipped", Channel.APP_PUSH) is template(POLICY, "order.shipped", Channel.APP_PUSH)
