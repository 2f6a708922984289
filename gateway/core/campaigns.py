"""Campaigns as an operator sees them: create (validated against the policy), read with
progress and funnel, and the state changes (start, pause, resume, cancel), each a
versioned write so two operators at once cannot lose a step."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import msgspec

from gateway.clock import Clock
from gateway.core import funnel
from gateway.core.audience import Audience, AudienceError, parse
from gateway.core.validate import check_campaign_id, check_user_id, validate_push
from gateway.errors import (
    AlreadyExists,
    FailedPrecondition,
    HeraldError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from gateway.policy.holder import PolicyHolder
from gateway.policy.model import Policy
from gateway.store.base import Store
from gateway.values.campaigns import (
    HOLDOUT,
    METRICS,
    MOVES,
    Campaign,
    CampaignState,
    ShardProgress,
    TestPlan,
    Variant,
    request_id_of,
)
from gateway.values.claims import Claim, PushInput, fingerprint_of
from gateway.values.domain import Category

VARIANT_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
MAX_VARIANTS = 10
MAX_WEIGHT = 1000
MAX_HOLDOUT = 0.5
MAX_DESCRIPTION = 500
MAX_TEST_WAIT = timedelta(days=7)


@dataclass(frozen=True)
class CampaignSpec:
    """A campaign as the caller asks for it, unvalidated."""

    campaign_id: str
    scenario: str
    audience: str
    variants: tuple[Variant, ...]
    params: Mapping[str, str]
    holdout: float = 0.0
    start_at: datetime | None = None
    deadline: datetime | None = None
    priority: int | None = None
    description: str = ""
    test: TestPlan | None = None


@dataclass(frozen=True)
class CampaignView:
    """A campaign with where its run stands and its funnel."""

    campaign: Campaign
    progress: list[ShardProgress]
    funnel: list[funnel.Row]


def audience_of(text: str, policy: Policy) -> Audience:
    """The audience a campaign names: one from policy by name, or an expression."""
    named = policy.audiences.get(text.strip()) if text.strip() else None
    try:
        return parse(named.expression if named is not None else text, policy.tiers.names)
    except AudienceError as exc:
        raise InvalidArgument("audience", str(exc)) from None


def _merged(campaign_params: Mapping[str, str], variant: Variant) -> dict[str, str]:
    return {**campaign_params, **variant.params}


def build(bu: str, spec: CampaignSpec, policy: Policy, now: datetime) -> Campaign:
    """The campaign ``spec`` describes, or the first rule it breaks."""
    check_campaign_id("campaign.campaign_id", spec.campaign_id)
    scenario = policy.scenarios.get(spec.scenario)
    if scenario is None or not policy.granted(bu, spec.scenario):
        granted = ", ".join(s for s in sorted(policy.business_units[bu].scenarios) if _is_marketing(policy, s))
        raise PermissionDenied(
            f"business unit '{bu}' may not run campaigns of scenario '{spec.scenario[:64]}'; "
            f"its marketing scenarios: {granted or 'none'}"
        )
    if scenario.category is not Category.MARKETING:
        raise InvalidArgument(
            "campaign.scenario", f"'{spec.scenario}' is {scenario.category}; a campaign sends a marketing scenario"
        )
    audience = audience_of(spec.audience, policy)
    if not spec.variants:
        raise InvalidArgument("campaign.variants", "give at least one variant (name, weight, params or content)")
    if len(spec.variants) > MAX_VARIANTS:
        raise InvalidArgument("campaign.variants", f"has {len(spec.variants)}; at most {MAX_VARIANTS}")
    names: set[str] = set()
    for index, variant in enumerate(spec.variants):
        where = f"campaign.variants[{index}]"
        if not VARIANT_RE.match(variant.name) or variant.name == HOLDOUT:
            raise InvalidArgument(f"{where}.name", "must be 1-32 characters of letters, digits, _ and -, not 'holdout'")
        if variant.name in names:
            raise InvalidArgument(f"{where}.name", f"'{variant.name}' is used twice")
        names.add(variant.name)
        if not 1 <= variant.weight <= MAX_WEIGHT:
            raise InvalidArgument(f"{where}.weight", f"is {variant.weight}; it must be 1-{MAX_WEIGHT}")
        # The variant's claim must pass what any Push of the scenario must pass.
        sample = PushInput(
            "cmp:check",
            "u",
            spec.scenario,
            _merged(spec.params, variant),
            variant.content,
            spec.campaign_id,
            deadline=None,
            priority=spec.priority,
        )
        try:
            validate_push(bu, sample, policy, now)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{where}.{exc.field}", exc.rule) from None
    if not 0.0 <= spec.holdout <= MAX_HOLDOUT:
        raise InvalidArgument("campaign.holdout", f"is {spec.holdout:g}; it must be between 0 and {MAX_HOLDOUT:g}")
    begins = spec.start_at or now
    if spec.deadline is not None and spec.deadline <= max(begins, now):
        raise InvalidArgument("campaign.deadline", "must be after the start time and in the future")
    if spec.test is not None:
        _check_test(spec.test, len(spec.variants))
    if len(spec.description) > MAX_DESCRIPTION:
        raise InvalidArgument("campaign.description", f"at most {MAX_DESCRIPTION} characters")
    variants = tuple(
        Variant(
            v.name, v.weight, _merged(spec.params, v), v.content if v.content and not v.content.is_empty() else None
        )
        for v in spec.variants
    )
    return Campaign(
        campaign_id=spec.campaign_id,
        bu=bu,
        scenario=spec.scenario,
        audience=audience.text,
        variants=variants,
        created_at=now,
        updated_at=now,
        description=spec.description,
        holdout=spec.holdout,
        start_at=spec.start_at,
        deadline=spec.deadline,
        priority=50 if spec.priority is None else spec.priority,
        test=spec.test,
    )


def _check_test(test: TestPlan, variants: int) -> None:
    if variants < 2:
        raise InvalidArgument("campaign.test", "a test needs two variants or more to pick from")
    if not 0.0 < test.sample < 1.0:
        raise InvalidArgument("campaign.test.sample", f"is {test.sample:g}; give a share over 0 and under 1, e.g. 0.1")
    if not timedelta(0) <= test.wait <= MAX_TEST_WAIT:
        raise InvalidArgument("campaign.test.wait", "must be between 0 and 7 days")
    if test.metric not in METRICS:
        raise InvalidArgument("campaign.test.metric", f"'{test.metric[:32]}' is not one of {', '.join(METRICS)}")


def _is_marketing(policy: Policy, scenario: str) -> bool:
    found = policy.scenarios.get(scenario)
    return found is not None and found.category is Category.MARKETING


def _same_definition(a: Campaign, b: Campaign) -> bool:
    # What the run changes, not the caller's definition.
    keep = {
        "created_at", "updated_at", "state", "started_at", "finished_at", "version",
        "tested_at", "winner", "paused_because", "swept",
    }  # fmt: skip
    fields = [f for f in a.__struct_fields__ if f not in keep]
    return all(getattr(a, f) == getattr(b, f) for f in fields)


def claim_input(campaign: Campaign, user_id: str) -> PushInput:
    """A user's claim of the campaign, the same every time it is made (its request id
    and body are what make a resumed run, or a conversion, find the same message)."""
    return _share_input(campaign, campaign.share_for(user_id) or campaign.share_of(user_id), user_id)


def _share_input(campaign: Campaign, share: str, user_id: str) -> PushInput:
    variant = campaign.variant(share) or campaign.variants[0]
    return PushInput(
        request_id=request_id_of(campaign.campaign_id, user_id),
        user_id=user_id,
        scenario=campaign.scenario,
        params=dict(variant.params),
        content=variant.content,
        campaign_id=campaign.campaign_id,
        dedup_key=f"campaign:{campaign.campaign_id}",
        deadline=campaign.deadline,
        priority=campaign.priority,
        variant=share,
    )


class CampaignClaims:
    """A campaign's claims under one policy, made many at a time: each share (variant or
    holdout) is validated once, and a user's claim is its share's claim with the user's
    ids put in. The claim and fingerprint are those ``validate_push(claim_input(...))``
    gives (a test holds them equal), at a fraction of the cost."""

    def __init__(self, campaign: Campaign, policy: Policy, now: datetime) -> None:
        self._campaign = campaign
        self._shares: dict[str, tuple[Claim, bytes] | HeraldError] = {}
        for share in (*campaign.variant_names, HOLDOUT):
            request = _share_input(campaign, share, "u")
            try:
                self._shares[share] = (validate_push(campaign.bu, request, policy, now), request.body_but_user())
            except HeraldError as exc:
                self._shares[share] = exc

    def refused(self) -> HeraldError | None:
        """Why a variant the current scan hands out cannot be claimed, if one cannot: a
        matter of the campaign and the policy, not of its users (the scan after a test
        hands out the winner only; the holdout's claim is the first variant's)."""
        campaign = self._campaign
        handed = (campaign.winner,) if campaign.test is not None and campaign.winner else campaign.variant_names
        return next((made for name in handed if isinstance(made := self._shares[name], HeraldError)), None)

    def claim(self, user_id: str) -> tuple[Claim, str] | HeraldError:
        """The user's claim and its fingerprint, or why the user's share cannot be sent
        (a policy changed since the campaign was made, its deadline passed)."""
        try:
            check_user_id(user_id)
        except InvalidArgument as exc:
            return exc
        campaign = self._campaign
        share = self._shares[campaign.share_for(user_id) or campaign.share_of(user_id)]
        if isinstance(share, HeraldError):
            return share
        template, body = share
        request_id = request_id_of(campaign.campaign_id, user_id)
        claim = msgspec.structs.replace(template, request_id=request_id, user_id=user_id)
        return claim, fingerprint_of(user_id, body)


class Campaigns:
    def __init__(self, store: Store, policies: PolicyHolder, clock: Clock) -> None:
        self._store = store
        self._policies = policies
        self._clock = clock

    async def create(self, bu: str, spec: CampaignSpec) -> Campaign:
        campaign = build(bu, spec, self._policies.current, self._clock.now())
        stored = await self._store.put_campaign(campaign, None)
        if stored is not None:
            return stored
        existing = await self._get(bu, campaign.campaign_id)
        if _same_definition(existing, campaign):
            return existing  # the same create again (a retried call)
        raise AlreadyExists(
            f"campaign '{campaign.campaign_id}' exists with another definition; pick another campaign_id"
        )

    async def _get(self, bu: str, campaign_id: str) -> Campaign:
        [found] = await self._store.get_campaigns([campaign_id])
        if found is None or found.bu != bu:
            raise NotFound(f"campaign '{campaign_id[:64]}' not found")
        return found

    async def get(self, bu: str, campaign_id: str) -> CampaignView:
        campaign = await self._get(bu, campaign_id)
        progress = [p for scan in campaign.scan_ids for p in await self._store.campaign_progress(scan)]
        if campaign.test is not None:
            # Shards count once: done when both scans are.
            shards = len(progress) // 2
            progress = [
                msgspec.structs.replace(
                    a,
                    done=a.done and b.done,
                    scanned=a.scanned + b.scanned,
                    matched=a.matched + b.matched,
                    holdout=a.holdout + b.holdout,
                    errors=a.errors + b.errors,
                )
                for a, b in zip(progress[:shards], progress[shards:], strict=True)
            ]
        counts = await self._store.funnel(campaign_id)
        return CampaignView(campaign, progress, funnel.rows(counts, campaign.variant_names))

    async def list(self, bu: str, limit: int) -> list[Campaign]:
        if not 0 <= limit <= 500:
            raise InvalidArgument("limit", "must be 0-500 (0: 50)")
        return await self._store.list_campaigns(bu, limit or 50)

    async def change(self, bu: str, campaign_id: str, action: str) -> Campaign:
        """Start, pause, resume or cancel; retried on a concurrent change."""
        allowed, target = MOVES[action]
        for _ in range(5):
            campaign = await self._get(bu, campaign_id)
            if campaign.state is target and action != "start":
                return campaign  # asked twice: already there
            if campaign.state not in allowed:
                raise FailedPrecondition(
                    f"campaign '{campaign_id}' is {campaign.state}; {action} needs it "
                    + " or ".join(sorted(s.value for s in allowed))
                )
            now = self._clock.now()
            changed = msgspec.structs.replace(
                campaign,
                state=target,
                updated_at=now,
                paused_because="",
                started_at=campaign.started_at or (now if target is CampaignState.RUNNING else None),
                finished_at=now if target is CampaignState.CANCELLED else campaign.finished_at,
            )
            stored = await self._store.put_campaign(changed, campaign.version)
            if stored is not None:
                return stored
        raise Unavailable(f"campaign '{campaign_id}' is being changed by others; try again")

    async def pause_for(self, campaign: Campaign, why: str) -> Campaign | None:
        """Pause a running campaign the runner cannot go on with, saying why; None when
        someone else changed it first."""
        if campaign.state is not CampaignState.RUNNING:
            return None
        now = self._clock.now()
        paused = msgspec.structs.replace(campaign, state=CampaignState.PAUSED, updated_at=now, paused_because=why)
        return await self._store.put_campaign(paused, campaign.version)

    async def swept(self, campaign: Campaign) -> Campaign | None:
        """A cancelled campaign's held claims are all ended: no more work for the runner;
        None when someone else changed it first."""
        if campaign.state is not CampaignState.CANCELLED or campaign.swept:
            return None
        return await self._store.put_campaign(msgspec.structs.replace(campaign, swept=True), campaign.version)

    async def scanned(self, campaign: Campaign) -> Campaign | None:
        """A running campaign's current scan is done: the test's part decided (now wait
        for its results), or everyone decided (completed). The stored campaign, or None
        when someone else moved it first."""
        if campaign.state is not CampaignState.RUNNING:
            return None
        now = self._clock.now()
        if campaign.phase == "test":
            moved = msgspec.structs.replace(campaign, tested_at=now, updated_at=now)
        else:
            moved = msgspec.structs.replace(campaign, state=CampaignState.COMPLETED, updated_at=now, finished_at=now)
        return await self._store.put_campaign(moved, campaign.version)

    async def pick_winner(self, campaign: Campaign) -> Campaign | None:
        """After the test's wait: the variant with the best metric goes to the rest."""
        assert campaign.test is not None and campaign.tested_at is not None
        now = self._clock.now()
        if campaign.state is not CampaignState.RUNNING or now < campaign.tested_at + campaign.test.wait:
            return None
        rows = funnel.rows(await self._store.funnel(campaign.campaign_id), campaign.variant_names)
        by_name = {row.variant: row for row in rows}
        metric = campaign.test.metric
        # Best metric first; on a tie, the variant listed first.
        best = max(campaign.variants, key=lambda v: getattr(by_name[v.name], metric))
        moved = msgspec.structs.replace(campaign, winner=best.name, updated_at=now)
        return await self._store.put_campaign(moved, campaign.version)


__all__ = ["CampaignClaims", "CampaignSpec", "CampaignView", "Campaigns", "audience_of", "build"]
