"""Request validation and classification: ``PushInput`` -> ``Claim`` or an error that
names the field and the rule.

Classification is part of it: the category comes from the scenario in policy, and the
content guard refuses free text that reads as marketing in basic and reminder
scenarios (WeChat blocks an account's template interface when templates carry it).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from gateway.errors import InvalidArgument, PermissionDenied
from gateway.policy.model import Policy
from gateway.policy.schema import Scenario
from gateway.values.claims import DEFAULT_PRIORITY, Claim, Content, PushInput
from gateway.values.domain import Category

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
USER_ID_RE = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
CAMPAIGN_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
MAX_PARAMS = 64
MAX_PARAM_LEN = 512
MAX_TITLE = 64
MAX_BODY = 2000
MAX_URL = 1024
MAX_DEDUP_KEY = 256
MAX_SCHEDULE_AHEAD = timedelta(days=30)


def check_id(field: str, value: str, pattern: re.Pattern[str], rule: str) -> None:
    if not value:
        raise InvalidArgument(field, "is required")
    if not pattern.match(value):
        raise InvalidArgument(field, rule)


def check_user_id(value: str, field: str = "user_id") -> None:
    check_id(field, value, USER_ID_RE, "must be 1-128 characters of letters, digits and . _ : @ -")


def check_campaign_id(field: str, value: str) -> None:
    check_id(field, value, CAMPAIGN_ID_RE, "must be 1-64 characters of letters, digits and . _ : -")


def check_text(field: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise InvalidArgument(field, f"is {len(value)} characters; at most {limit} are allowed")
    if CONTROL_RE.search(value):
        raise InvalidArgument(field, "contains control characters")


def is_web_link(value: str) -> bool:
    """An absolute http(s) URL."""
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def check_url(field: str, value: str) -> None:
    check_text(field, value, MAX_URL)
    if not is_web_link(value):
        raise InvalidArgument(field, "must be an absolute http(s) URL")


def validate_push(bu: str, request: PushInput, policy: Policy, now: datetime) -> Claim:
    check_id(
        "request_id",
        request.request_id,
        REQUEST_ID_RE,
        "must be 1-128 characters of letters, digits and . _ : -",
    )
    check_user_id(request.user_id)
    if not request.scenario:
        raise InvalidArgument("scenario", "is required")
    scenario = policy.scenarios.get(request.scenario)
    if scenario is None:
        granted = ", ".join(sorted(policy.business_units[bu].scenarios)) or "none"
        raise InvalidArgument(
            "scenario", f"unknown scenario '{request.scenario[:64]}'; scenarios granted to {bu}: {granted}"
        )
    if not policy.granted(bu, request.scenario):
        raise PermissionDenied(
            f"business unit '{bu}' may not send scenario '{request.scenario}'; "
            f"ask the policy owners to add it to business_units.{bu}.scenarios"
        )
    content = check_message(request, scenario, policy)
    _check_campaign(request, scenario.category)
    if request.dedup_key:
        check_text("dedup_key", request.dedup_key, MAX_DEDUP_KEY)
        if not request.dedup_key.isprintable():
            raise InvalidArgument("dedup_key", "must be printable characters")
    _check_times(request, now)
    priority = DEFAULT_PRIORITY if request.priority is None else request.priority
    if not 0 <= priority <= 100:
        raise InvalidArgument("priority", f"is {priority}; it must be between 0 and 100")
    return Claim(
        bu=bu,
        request_id=request.request_id,
        user_id=request.user_id,
        scenario=request.scenario,
        category=scenario.category,
        params=dict(request.params),
        content=content,
        campaign_id=request.campaign_id,
        dedup_key=request.dedup_key,
        not_before=request.not_before,
        deadline=request.deadline,
        priority=priority,
        variant=request.variant,
    )


def check_message(request: PushInput, scenario: Scenario, policy: Policy) -> Content | None:
    """What a request carries into the message, checked against its scenario: the params
    (all required, none unknown, none too long) and the free text (allowed, within its
    limits, free of the content guard's words in basic and reminder scenarios). Shared by
    Push and ``herald preview``."""
    _check_params(request, scenario.params, scenario.optional_params)
    return _check_content(request, scenario.free_text, scenario.category, policy)


def _check_params(request: PushInput, required: tuple[str, ...], optional: tuple[str, ...]) -> None:
    if len(request.params) > MAX_PARAMS:
        raise InvalidArgument("params", f"has {len(request.params)} entries; at most {MAX_PARAMS} are allowed")
    missing = [name for name in required if not request.params.get(name)]
    if missing:
        raise InvalidArgument("params", f"scenario '{request.scenario}' needs {', '.join(missing)} (missing or empty)")
    declared = set(required) | set(optional)
    unknown = sorted(set(request.params) - declared)
    if unknown:
        allowed = ", ".join(sorted(declared)) or "none"
        raise InvalidArgument(
            "params", f"scenario '{request.scenario}' does not take {', '.join(unknown)[:200]}; it takes: {allowed}"
        )
    for name, value in request.params.items():
        check_text(f"params.{name}", value, MAX_PARAM_LEN)


def _check_content(request: PushInput, free_text: bool, category: Category, policy: Policy) -> Content | None:
    content = request.content
    if content is None or content.is_empty():
        return None
    if not free_text:
        raise InvalidArgument("content", f"scenario '{request.scenario}' takes no free text; send params only")
    check_text("content.title", content.title, MAX_TITLE)
    check_text("content.body", content.body, MAX_BODY)
    if content.url:
        check_url("content.url", content.url)
    if category is not Category.MARKETING:
        # Every field's words, so that one fix is enough: not the title's, then the body's.
        hits = [
            (field, ", ".join(f"'{word}'" for word in found))
            for field, text in (("content.title", content.title), ("content.body", content.body))
            if (found := policy.content_guard.find(text))
        ]
        if hits:
            why = f"{category} messages may not carry promotions. Send it through a marketing scenario instead"
            if len(hits) == 1:
                raise InvalidArgument(hits[0][0], f"reads as marketing ({hits[0][1]}); {why}")
            said = "; ".join(f"{field}: {quoted}" for field, quoted in hits)
            raise InvalidArgument("content", f"reads as marketing ({said}); {why}")
    return content


def _check_campaign(request: PushInput, category: Category) -> None:
    if category is Category.MARKETING:
        check_campaign_id("campaign_id", request.campaign_id)
    elif request.campaign_id:
        raise InvalidArgument(
            "campaign_id", f"only marketing scenarios carry a campaign; '{request.scenario}' is {category}"
        )


def _check_times(request: PushInput, now: datetime) -> None:
    if request.not_before is not None and request.not_before > now + MAX_SCHEDULE_AHEAD:
        raise InvalidArgument("not_before", "is more than 30 days ahead")
    if request.deadline is not None:
        if request.deadline <= now:
            raise InvalidArgument("deadline", "is in the past")
        if request.not_before is not None and request.deadline <= request.not_before:
            raise InvalidArgument("deadline", "must be after not_before")
