"""The policy files' schema: one pydantic model per block, unknown keys refused.

A policy set is a folder of YAML files. Each file holds any of the top-level sections
of ``PolicyFile``; the loader (``loader.py``) merges them and checks what spans files
(names that refer to each other). Every model here is frozen: a loaded policy never
changes, a reload builds a new one.
"""

from __future__ import annotations

import json
import re
import zoneinfo
from datetime import time, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from gateway.core.audience import parse_syntax
from gateway.core.locales import LOCALE_RE
from gateway.durations import DURATION_UNITS, parse_duration
from gateway.policy.providers import Provider
from gateway.policy.wechat_events import WechatEvents
from gateway.values.domain import Category, Channel, InteractionKind

NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
PARAM_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
AUDIENCE_NAME_RE = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
CALENDAR_WINDOWS = ("day", "week", "month")


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as 24h or 7d, got {value!r}")
    return parse_duration(value)


def _time_of_day(value: Any) -> time:
    if isinstance(value, time):
        return value
    if isinstance(value, int):  # YAML 1.1 reads 07:30 unquoted as a sexagesimal int
        raise ValueError('quote times of day, e.g. "07:30" (YAML reads 07:30 as a number)')
    if not isinstance(value, str) or not re.fullmatch(r"\d{2}:\d{2}", value):
        raise ValueError(f'expected a time of day as "HH:MM", got {value!r}')
    hours, minutes = int(value[:2]), int(value[3:])
    if hours > 23 or minutes > 59:
        raise ValueError(f"'{value}' is not a time of day (00:00 to 23:59)")
    return time(hours, minutes)


# What the files write, for the JSON Schema editors check them with (``json_schema``):
# the validators above take these strings, not the ISO forms pydantic would describe.
DURATION_PATTERN = r"^\s*[0-9]+\s*[" + "".join(DURATION_UNITS) + r"]\s*$"
TIME_PATTERN = r"^[0-9]{2}:[0-9]{2}$"
_DURATION_SCHEMA: JsonSchemaValue = {
    "type": "string",
    "pattern": DURATION_PATTERN,
    "description": "a number and a unit (s, m, h, d, w), e.g. 90s, 5m, 24h, 7d",
}
_TIME_SCHEMA: JsonSchemaValue = {
    "type": "string",
    "pattern": TIME_PATTERN,
    "description": 'a time of day, quoted: "07:30"',
}

Duration = Annotated[timedelta, BeforeValidator(_duration), WithJsonSchema(_DURATION_SCHEMA)]
TimeOfDay = Annotated[time, BeforeValidator(_time_of_day), WithJsonSchema(_TIME_SCHEMA)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TimeWindow(Strict):
    """A daily period in local time, ``"07:30-09:30"``; may wrap past midnight."""

    start: time
    end: time

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = value.split("-")
            if len(parts) != 2:
                raise ValueError(f'expected "HH:MM-HH:MM", got {value!r}')
            return {"start": _time_of_day(parts[0].strip()), "end": _time_of_day(parts[1].strip())}
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> TimeWindow:
        if self.start == self.end:
            raise ValueError("a window's start and end must differ")
        return self

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"

    @classmethod
    def __get_pydantic_json_schema__(cls, core: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {
            "type": "string",
            "pattern": r"^\s*[0-9]{2}:[0-9]{2}\s*-\s*[0-9]{2}:[0-9]{2}\s*$",
            "description": 'a daily period in local time, "07:30-09:30"; may wrap past midnight',
        }


def _check_timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone '{value}'; use an IANA name such as Asia/Shanghai") from None
    return value


class AutoStop(Strict):
    # Over the last `last` sends of one campaign (or scenario without a campaign), when
    # at least `min_sends` are known and the share blocked/unsubscribed reaches
    # `threshold`, a kill switch for it is set, with the figures in its reason.
    last: int = Field(default=200, ge=10, le=10_000)
    min_sends: int = Field(default=50, ge=1)
    threshold: float = Field(default=0.05, gt=0, le=1)
    categories: tuple[Category, ...] = (Category.MARKETING, Category.REMINDER)


class Defaults(Strict):
    timezone: str = "Asia/Shanghai"
    idempotency_window: Duration = timedelta(hours=24)
    message_retention: Duration = timedelta(days=7)
    # A profile not written for this long is forgotten (renewed on every write).
    profile_retention: Duration = timedelta(days=400)
    send_windows: tuple[TimeWindow, ...] = ()
    collection_delay: Duration = timedelta(minutes=5)
    # Releases at a window's opening or a quiet period's end are spread over this much
    # time (each user on a stable offset), so a million deferred claims do not fire in
    # the same second.
    release_spread: Duration = timedelta(minutes=20)
    # How long a claim without a deadline may wait for a send window.
    max_hold: Duration = timedelta(hours=48)
    # A conversion counts for a campaign when it comes this long at most after the
    # user clicked its message (or, without a click, after it was sent).
    attribution_window: Duration = timedelta(days=7)
    # Herald stops a campaign (or a reminder scenario) itself when too many of its
    # recent sends come back blocked or unsubscribed. None: never.
    auto_stop: AutoStop | None = None

    _tz = field_validator("timezone")(_check_timezone)


class RateLimit(Strict):
    requests: int = Field(gt=0)
    per: Duration = timedelta(seconds=1)


class BusinessUnit(Strict):
    description: str = ""
    weight: int = Field(ge=1, le=1000)
    scenarios: tuple[str, ...] = ()
    rate_limit: RateLimit | None = None
    # read: GetUser; write: the contact sections of UpsertUser; tag: tags and attributes.
    profiles: tuple[Literal["read", "write", "tag"], ...] = ()


class MiniProgram(Strict):
    appid: str
    pagepath: str


class WechatTemplateContent(Strict):
    template_id: str = Field(min_length=1)
    url: str | None = None
    miniprogram: MiniProgram | None = None
    fields: dict[str, str] = Field(min_length=1)


class NewsArticle(Strict):
    title: str
    description: str = ""
    url: str
    picurl: str = ""


class WechatCsContent(Strict):
    text: str | None = None
    news: NewsArticle | None = None

    @model_validator(mode="after")
    def _one(self) -> WechatCsContent:
        if (self.text is None) == (self.news is None):
            raise ValueError("give exactly one of text or news")
        return self


class WechatMassContent(Strict):
    text: str | None = None
    media_id: str | None = None

    @model_validator(mode="after")
    def _one(self) -> WechatMassContent:
        if (self.text is None) == (self.media_id is None):
            raise ValueError("give exactly one of text or media_id (an mpnews article)")
        return self


class SmsContent(Strict):
    template_code: str = Field(min_length=1)
    sign_name: str | None = None
    params: dict[str, str] = {}


class EmailContent(Strict):
    subject: str = Field(min_length=1)
    text: str = Field(min_length=1)
    html: str | None = None


class AppPushContent(Strict):
    title: str = Field(min_length=1)
    body: str = Field(min_length=1)
    url: str | None = None


class ChannelContents(Strict):
    """One content block per channel."""

    wechat_template: WechatTemplateContent | None = None
    wechat_cs: WechatCsContent | None = None
    wechat_mass: WechatMassContent | None = None
    sms: SmsContent | None = None
    email: EmailContent | None = None
    app_push: AppPushContent | None = None

    def for_channel(self, channel: Channel) -> Strict | None:
        block: Strict | None = getattr(self, channel.content_key)
        return block


def _locale_tag(tag: str) -> str:
    if not LOCALE_RE.match(tag):
        raise ValueError(f"'{tag[:64]}' is not a locale tag; write one such as en, en-GB or zh-Hant-TW")
    return tag


LocaleTag = Annotated[str, AfterValidator(_locale_tag)]


class ScenarioContent(ChannelContents):
    """The default content, and content per locale: a user whose profile's ``locale``
    picks one (``gateway/core/locales.py``) gets its block for the channel, or the
    default block when that locale has none for it."""

    locales: dict[LocaleTag, ChannelContents] = {}

    @field_validator("locales")
    @classmethod
    def _distinct(cls, value: dict[str, ChannelContents]) -> dict[str, ChannelContents]:
        seen: dict[str, str] = {}
        for tag, blocks in value.items():
            if tag.lower() in seen:
                raise ValueError(f"locale '{tag}' is also written '{seen[tag.lower()]}': tags ignore case")
            seen[tag.lower()] = tag
            if not any(blocks.for_channel(channel) is not None for channel in Channel):
                raise ValueError(f"locale '{tag}' gives no content block; give one for a channel of the scenario")
        return value

    def block(self, channel: Channel, locale: str | None) -> Strict | None:
        """The block for ``channel`` of the locale named exactly so (a key of
        ``locales``), else the default one."""
        if locale:
            written = self.locales[locale].for_channel(channel)
            if written is not None:
                return written
        return self.for_channel(channel)


class Scenario(Strict):
    category: Category
    description: str = ""
    params: tuple[str, ...] = ()
    optional_params: tuple[str, ...] = ()
    free_text: bool = False
    channels: tuple[Channel, ...] = Field(min_length=1)
    # False: free channels go before paid ones (WeChat before SMS), each group in the
    # order above. True: exactly the order above (e.g. SMS first for security codes).
    keep_order: bool = False
    content: ScenarioContent
    target_tiers: tuple[str, ...] = ()

    @field_validator("params", "optional_params")
    @classmethod
    def _param_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if not PARAM_RE.match(name):
                raise ValueError(f"parameter name '{name}' must start with a letter and use only a-z, 0-9 and _")
        if len(set(names)) != len(names):
            raise ValueError("a parameter is listed twice")
        return names

    @field_validator("channels")
    @classmethod
    def _unique_channels(cls, channels: tuple[Channel, ...]) -> tuple[Channel, ...]:
        if len(set(channels)) != len(channels):
            raise ValueError("a channel is listed twice")
        return channels


class QuietHours(Strict):
    mode: Literal["exempt", "defer", "drop"]
    start: TimeOfDay | None = None
    end: TimeOfDay | None = None

    @model_validator(mode="after")
    def _period(self) -> QuietHours:
        if self.mode != "exempt" and (self.start is None or self.end is None):
            raise ValueError(f'mode \'{self.mode}\' needs start and end ("22:00", "08:00")')
        return self


class CapWindow(Strict):
    """Either a calendar window (``day``, ``week``, ``month`` in the user's time zone)
    or a rolling one (``24h``, ``7d``)."""

    calendar: Literal["day", "week", "month"] | None = None
    rolling: timedelta | None = None

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value in CALENDAR_WINDOWS:
                return {"calendar": value}
            try:
                return {"rolling": parse_duration(value)}
            except ValueError as exc:
                raise ValueError(f"{exc}; or use a calendar window: day, week, month") from None
        return value

    def __str__(self) -> str:
        from gateway.durations import format_duration

        if self.calendar:
            return self.calendar
        assert self.rolling is not None
        return format_duration(self.rolling)

    @classmethod
    def __get_pydantic_json_schema__(cls, core: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {
            "anyOf": [{"enum": list(CALENDAR_WINDOWS)}, {"type": "string", "pattern": DURATION_PATTERN}],
            "description": "a calendar window (day, week, month in the user's time zone) or a rolling one (24h, 7d)",
        }


class CapRule(Strict):
    name: str | None = None
    window: CapWindow
    limit: int = Field(ge=0)
    per_tier: dict[str, int] = {}
    channel: Channel | None = None
    bu: str | None = None

    @field_validator("per_tier")
    @classmethod
    def _non_negative(cls, value: dict[str, int]) -> dict[str, int]:
        for tier, limit in value.items():
            if limit < 0:
                raise ValueError(f"limit for tier '{tier}' must be 0 or more")
        return value

    def limit_for(self, tier: str) -> int:
        return self.per_tier.get(tier, self.limit)

    def label(self, index: int) -> str:
        return self.name or f"caps[{index}]"


class CategoryPolicy(Strict):
    fail_mode: Literal["open", "closed"] = "closed"
    dedup_window: Duration = timedelta(hours=24)
    quiet_hours: QuietHours = QuietHours(mode="exempt")
    caps: tuple[CapRule, ...] = ()
    arbitrate: bool | None = None


class Range(Strict):
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self

    def holds(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


class TierRule(Strict):
    name: str
    never_purchased: bool | None = None
    recency_days: Range | None = None
    orders: Range | None = None
    spend: Range | None = Field(default=None, description="in major currency units")


class TierPolicy(Strict):
    period: Duration = timedelta(days=90)
    default: str
    rules: tuple[TierRule, ...] = ()

    @model_validator(mode="after")
    def _unique(self) -> TierPolicy:
        names = [rule.name for rule in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tier(s) defined twice: {', '.join(dupes)}")
        return self

    @property
    def names(self) -> frozenset[str]:
        return frozenset([self.default, *(rule.name for rule in self.rules)])


class CsWindow(Strict):
    window: Duration
    messages: int | None = Field(default=None, ge=1, description="None: no limit")


class ChannelPolicy(Strict):
    cost: float = Field(ge=0)
    reach: float = Field(ge=0, le=1)
    provider: str
    per_user_daily_limit: int | None = Field(default=None, ge=1)
    per_user_monthly_limit: int | None = Field(default=None, ge=1)
    cs_windows: dict[InteractionKind, CsWindow] = {}


def _audience_name(name: str) -> str:
    if not AUDIENCE_NAME_RE.fullmatch(name):
        raise ValueError(
            f"audience name '{name[:64]}' must start with a lowercase letter and use only a-z, 0-9, _ . and - "
            "(at most 64 characters)"
        )
    return name


AudienceName = Annotated[str, AfterValidator(_audience_name)]


class AudienceDefinition(Strict):
    """Who a campaign targets, as an expression over profiles (docs/audiences.md)."""

    description: str = ""
    expression: str

    @field_validator("expression")
    @classmethod
    def _syntax(cls, value: str) -> str:
        # Tier names are checked once every file is read (the loader's cross-check).
        parse_syntax(value)
        return value


class PolicyFile(Strict):
    """What one YAML file may hold; every section optional, merged across files."""

    defaults: Defaults | None = None
    content_guard: dict[str, tuple[str, ...]] | None = None
    business_units: dict[str, BusinessUnit] | None = None
    scenarios: dict[str, Scenario] | None = None
    categories: dict[Category, CategoryPolicy] | None = None
    tiers: TierPolicy | None = None
    channels: dict[Channel, ChannelPolicy] | None = None
    providers: dict[str, Provider] | None = None
    audiences: dict[AudienceName, AudienceDefinition] | None = None
    wechat_events: WechatEvents | None = None

    @field_validator("business_units", "scenarios", "providers")
    @classmethod
    def _names(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        for name in value or {}:
            if not NAME_RE.match(name):
                raise ValueError(f"name '{name}' must be lowercase letters and digits, joined by . _ or -")
        return value


# The JSON Schema of a policy file, committed beside the sample policies so that editors
# (the YAML language server) complete and check keys as one types: each sample file's
# first line points to it. tests/policy/test_json_schema.py fails when it drifts.
SCHEMA_FILE = "herald-policy.schema.json"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schema() -> dict[str, Any]:
    """The JSON Schema of one policy file, generated from ``PolicyFile``. It checks the
    shape of each file (keys, types, formats); what spans files (a scenario's business
    unit, a tier's name) only ``herald policy check`` can."""
    schema = PolicyFile.model_json_schema(mode="validation")
    return {"$schema": JSON_SCHEMA_DIALECT, **schema, "title": "Herald policy file"}


def json_schema_text() -> str:
    """``json_schema()`` as the committed file holds it (stable key order, a final newline)."""
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"
