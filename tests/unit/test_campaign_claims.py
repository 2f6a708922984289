"""A campaign's claims made many at a time are the claims a single push of the same
body makes: the same claim, the same fingerprint (a resumed run must find the answers
an earlier run stored), the same errors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec
import pytest

from gateway.core.campaigns import CampaignClaims, CampaignSpec, build, claim_input
from gateway.core.decide import _local
from gateway.core.validate import validate_push
from gateway.errors import HeraldError, InvalidArgument
from gateway.policy.loader import load_policy
from gateway.values.campaigns import HOLDOUT, Variant
from gateway.values.campaigns import TestPlan as Trial
from gateway.values.claims import Content, PushInput
from tests.conftest import POLICIES

POLICY = load_policy(POLICIES)
NOW = datetime(2026, 11, 1, 2, 0, tzinfo=UTC)
PARAMS = {"deposit": "50", "discount": "150"}


@pytest.mark.parametrize("tested", [False, True], ids=["plain", "test-then-winner"])
def test_each_users_claim_and_fingerprint_are_those_of_a_push(tested: bool) -> None:
    made = build(
        "marketing",
        CampaignSpec(
            "d11-presale",
            "new.arrivals",
            "tags any [double11]",
            (Variant("A", 3, {}, Content("双11 上新", "定金 50 抵 200", "")), Variant("B", 1)),
            {"category_name": "母婴"},
            holdout=0.2,
            deadline=NOW + timedelta(days=3),
            test=Trial(0.3, timedelta(minutes=30), "click_rate") if tested else None,
        ),
        POLICY,
        NOW,
    )
    if tested:
        made = msgspec.structs.replace(made, winner="B")
    maker = CampaignClaims(made, POLICY, NOW)
    shares = set()
    for n in range(400):
        user = f"u-{n}"
        request = claim_input(made, user)
        got = maker.claim(user)
        assert not isinstance(got, HeraldError)
        assert got == (validate_push("marketing", request, POLICY, NOW), request.fingerprint())
        shares.add(got[0].variant)
    assert shares == {"A", "B", HOLDOUT}


def test_a_share_the_policy_refuses_gives_its_error_for_each_user() -> None:
    made = build(
        "marketing",
        CampaignSpec("d11-presale", "double11.presale", "tags any [double11]", (Variant("A", 1),), PARAMS),
        POLICY,
        NOW,
    )
    stale = msgspec.structs.replace(made, variants=(Variant("A", 1, {"deposit": "50"}),))  # a param missing
    maker = CampaignClaims(stale, POLICY, NOW)
    for user in ("u-1", "u-2"):
        error = maker.claim(user)
        assert isinstance(error, InvalidArgument)
        assert "discount" in error.message
    bad = CampaignClaims(made, POLICY, NOW).claim("u 1")
    assert isinstance(bad, InvalidArgument) and bad.field == "user_id"


def test_the_fingerprint_formula_is_the_one_stored_answers_were_written_with() -> None:
    """Stored answers hold fingerprints: a change to the formula would make every request
    retried after an upgrade look like another body under the same request id."""
    request = PushInput(
        "r-1",
        "u-1",
        "order.shipped",
        {"order_id": "O-1", "carrier": "SF"},
        Content("t", "b", ""),
        deadline=datetime(2026, 1, 1, tzinfo=UTC),
        priority=60,
        variant="A",
    )
    assert request.fingerprint() == "9e3a91154b11be91691214e22bf20f55"
    assert PushInput("r-2", "u-2", "order.shipped").fingerprint() == "ef53fd81cd5f90b1a0701af3994bf5fb"


@pytest.mark.parametrize("zone", ["Asia/Shanghai", "Europe/Berlin", "America/St_Johns", "UTC"])
def test_a_time_shows_on_the_users_clock_to_the_minute(zone: str) -> None:
    tz = ZoneInfo(zone)
    for seconds in (0, 59, 60, 3599, 86_399, 1_234_567):
        moment = NOW + timedelta(seconds=seconds, microseconds=999_999)
        assert _local(moment, tz) == f"{moment.astimezone(tz):%Y-%m-%d %H:%M} {zone}"


def test_a_variant_the_scan_hands_out_that_the_policy_refuses_is_named() -> None:
    """Refused for a reason of the campaign and the policy: the scan must stop there
    rather than skip each of its users. After a test only the winner is handed out."""
    made = build(
        "marketing",
        CampaignSpec(
            "d11-presale",
            "double11.presale",
            "tags any [double11]",
            (Variant("A", 1), Variant("B", 1)),
            PARAMS,
            test=Trial(0.3, timedelta(minutes=30), "click_rate"),
        ),
        POLICY,
        NOW,
    )
    assert CampaignClaims(made, POLICY, NOW).refused() is None
    b_broken = msgspec.structs.replace(made, variants=(made.variants[0], Variant("B", 1, {"deposit": "50"})))
    during_test = CampaignClaims(b_broken, POLICY, NOW).refused()
    assert isinstance(during_test, InvalidArgument) and "discount" in during_test.message
    winner_b = CampaignClaims(msgspec.structs.replace(b_broken, winner="B"), POLICY, NOW).refused()
    assert isinstance(winner_b, InvalidArgument)
    assert CampaignClaims(msgspec.structs.replace(b_broken, winner="A"), POLICY, NOW).refused() is None
