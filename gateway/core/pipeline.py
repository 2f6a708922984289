"""The path of push requests: validate and classify, read the users, decide, commit
the decisions with their answers and delivery jobs. The only part of ``core`` that
does I/O.

Batch-native: PushBatch, the release of held claims and campaigns decide many claims
with one read and one commit (one round trip each, whatever the batch size; a PushBatch
of more than ``PART`` requests in parts at once, so that one part's round trips overlap
another's deciding); a single Push is a batch of one. Each user's part of a commit is
atomic and guarded by the user's version: when another decision changed the user
meanwhile, only that user's claims are read and decided again. Contention is never an
outage: a claim keeps trying (with jittered waits) for as long as ``CONTENTION_BUDGET``
allows.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from gateway.clock import Clock
from gateway.core.caps import keep_for
from gateway.core.decide import Context, HeldClaim, decide_arrival, decide_release
from gateway.core.explain import explain_arrival
from gateway.core.funnel import field_of
from gateway.core.history import HistoryQuery, list_messages
from gateway.core.keyed_lock import KeyedLock
from gateway.core.ratelimit import RateLimiter
from gateway.core.validate import validate_push
from gateway.delivery.spool import Spool
from gateway.durations import format_duration
from gateway.errors import AlreadyExists, HeraldError, NotFound, ResourceExhausted, StoreUnavailable, Unavailable
from gateway.ids import new_message_id
from gateway.killswitches import KillSwitches
from gateway.logs import get_logger
from gateway.masking import user_ref
from gateway.metrics import Metrics
from gateway.policy.holder import PolicyHolder
from gateway.policy.model import Policy
from gateway.store.base import (
    Change,
    Committed,
    IdemKey,
    IdemState,
    Lifetimes,
    MessageUpdate,
    NewMessage,
    Store,
    UserRead,
    UserView,
)
from gateway.store.codec import Spooled
from gateway.store.shards import shard_of
from gateway.values.campaigns import DECIDED, RELEASED, CampaignState
from gateway.values.claims import Claim, Content, PushInput
from gateway.values.decisions import Decision, PushAnswer
from gateway.values.domain import Channel, Outcome, Reason
from gateway.values.jobs import Job
from gateway.values.profiles import UserProfile
from gateway.values.records import Current, MessageRecord, TimelineEntry
from gateway.values.state import Hold, Mutation, Unhold, UserState, apply_mutations

log = get_logger(__name__)

# How long a claim keeps trying when other decisions keep changing its user first.
CONTENTION_BUDGET = 10.0
# A campaign's audience, asked about each user as read for the decision: True, the
# user is in it; False, not; None, in it but the scan's business in an earlier step (a
# user in two of the audience's tag indexes): decided now only if never answered, and
# an earlier answer not taken as this step's.
Admit = Callable[[str, UserProfile | None], bool | None]


def status_of(decision: Decision) -> str:
    if decision.outcome is Outcome.ACCEPTED:
        return "queued"
    if decision.outcome is Outcome.SCHEDULED:
        return "scheduled"
    return "expired" if decision.reason is Reason.EXPIRED else "suppressed"


def claim_of(record: MessageRecord) -> Claim:
    content = Content(**record.content) if record.content else None
    return Claim(
        bu=record.business_unit,
        request_id=record.request_id,
        user_id=record.user_id,
        scenario=record.scenario,
        category=record.category,
        params=record.params,
        content=content,
        campaign_id=record.campaign_id,
        dedup_key=record.dedup_key,
        not_before=None,
        deadline=record.deadline,
        priority=record.priority,
        variant=record.variant,
    )


def lifetimes(policy: Policy, campaign: bool = False) -> Lifetimes:
    """How long a commit's writes live. A campaign's answers are kept as long as a
    conversion may still be attributed to them (they lead from user to message)."""
    keep = policy.defaults.idempotency_window
    if campaign:
        keep = max(keep, policy.defaults.attribution_window)
    return Lifetimes(keep, policy.defaults.message_retention)


class RecentProfiles:
    """The profiles this process read last (bounded), for deciding fail-open."""

    def __init__(self, size: int = 100_000) -> None:
        self._size = size
        self._items: OrderedDict[str, UserProfile] = OrderedDict()

    def put(self, user_id: str, profile: UserProfile) -> None:
        self._items[user_id] = profile
        self._items.move_to_end(user_id)
        if len(self._items) > self._size:
            self._items.popitem(last=False)

    def get(self, user_id: str) -> UserProfile | None:
        return self._items.get(user_id)


@dataclass
class _Item:
    index: int
    claim: Claim
    idem: IdemKey
    # Given when the claim is first decided (not for a repeat, nor a user the campaign's
    # audience refuses), and kept through the rounds contention may take.
    message_id: str = ""


def _due(mutations: Sequence[Mutation]) -> datetime | None:
    return min((m.due for m in mutations if isinstance(m, Hold)), default=None)


# A batch larger than this is decided in parts at once (each user's claims in one
# part): one part's store round trip overlaps another's deciding, so a process given a
# single batch keeps its core busy instead of waiting for Redis twice a batch.
PART = 128


def _parts(items: list[_Item]) -> list[list[_Item]]:
    if len(items) <= PART:
        return [items]
    by_user: dict[str, list[_Item]] = {}
    for item in items:
        by_user.setdefault(item.claim.user_id, []).append(item)
    count = -(-len(items) // PART)
    parts: list[list[_Item]] = [[] for _ in range(count)]
    for index, group in enumerate(by_user.values()):
        parts[index % count] += group
    return [part for part in parts if part]


class PushPipeline:
    def __init__(
        self,
        store: Store,
        policies: PolicyHolder,
        switches: KillSwitches,
        clock: Clock,
        metrics: Metrics,
        limiter: RateLimiter,
        spool: Spool | None = None,
        down: Callable[[], frozenset[Channel]] = frozenset,
    ) -> None:
        self._down = down
        self._store = store
        self._policies = policies
        self._switches = switches
        self._clock = clock
        self._metrics = metrics
        self._limiter = limiter
        self._spool = spool
        self._users = KeyedLock()
        self._recent = RecentProfiles()

    # --- arrivals ------------------------------------------------------------------
    async def push(self, bu: str, request: PushInput) -> PushAnswer:
        [answer] = await self.push_many(bu, [request])
        if isinstance(answer, HeraldError):
            raise answer
        return answer

    async def push_many(self, bu: str, requests: Sequence[PushInput]) -> list[PushAnswer | HeraldError]:
        """Decide each request on its own; an answer or an error per request, in order."""
        results = await self._push_many(bu, requests)
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    async def push_audience(
        self, bu: str, claims: Sequence[tuple[Claim, str] | HeraldError], admit: Admit
    ) -> list[PushAnswer | HeraldError | None]:
        """A campaign's claims (each validated, with its fingerprint; or why it cannot
        be made): as ``push_many``, but ``admit`` (the audience, see ``Admit``) sees each
        claim's user profile as read for the decision, and a new claim it refuses is not
        decided (None). Not held to the unit's request rate (the runner paces itself), no
        request ids in the unit-wide index (a campaign's ids name their user), and the
        answers kept as long as a conversion may be attributed."""
        results: list[PushAnswer | HeraldError | None] = [None] * len(claims)
        items: list[_Item] = []
        for index, made in enumerate(claims):
            if isinstance(made, HeraldError):
                results[index] = made
                continue
            claim, fingerprint = made
            items.append(_Item(index, claim, IdemKey(bu, claim.request_id, fingerprint)))
        if items:
            async with self._users.hold_many({i.claim.user_id for i in items}):
                await self._decide_arrivals(items, results, admit)
        return results

    async def _push_many(self, bu: str, requests: Sequence[PushInput]) -> list[PushAnswer | HeraldError | None]:
        policy = self._policies.current
        limit = policy.business_units[bu].rate_limit
        if limit is not None and not self._limiter.allow(
            bu, limit.requests, limit.per.total_seconds(), cost=len(requests)
        ):
            raise ResourceExhausted(
                f"business unit '{bu}' is over its rate limit of {limit.requests} requests per "
                f"{format_duration(limit.per)}; slow down (or spread the batch)"
            )
        now = self._clock.now()
        results: list[PushAnswer | HeraldError | None] = [None] * len(requests)
        items: list[_Item] = []
        first: dict[str, tuple[int, str]] = {}
        repeats: list[tuple[int, int]] = []
        for index, request in enumerate(requests):
            try:
                claim = validate_push(bu, request, policy, now)
            except HeraldError as exc:
                results[index] = exc
                continue
            fingerprint = request.fingerprint()
            if request.request_id in first:  # the same request id twice in one batch
                earlier, earlier_print = first[request.request_id]
                if earlier_print != fingerprint:
                    results[index] = _reused(request.request_id)
                else:
                    repeats.append((index, earlier))
                continue
            first[request.request_id] = (index, fingerprint)
            items.append(_Item(index, claim, IdemKey(bu, request.request_id, fingerprint)))
        if items:
            async with self._users.hold_many({i.claim.user_id for i in items}):
                parts = _parts(items)
                if len(parts) == 1:
                    await self._decide_arrivals(items, results)
                else:
                    # Every part ends before the users' locks are let go, even when one fails.
                    ended = await asyncio.gather(
                        *(self._decide_arrivals(part, results) for part in parts), return_exceptions=True
                    )
                    failed = next((e for e in ended if isinstance(e, BaseException)), None)
                    if failed is not None:
                        raise failed
        for index, earlier in repeats:
            results[index] = results[earlier]
        return results

    async def _decide_arrivals(
        self, items: list[_Item], results: list[PushAnswer | HeraldError | None], campaign: Admit | None = None
    ) -> None:
        policy = self._policies.current
        began = time.monotonic()
        todo = items
        attempt = 0
        while todo:
            try:
                retry = await self._decide_round(todo, results, policy, campaign)
            except StoreUnavailable as exc:
                self._metrics.store_errors.labels("push").inc()
                await self._fail_open(todo, results, exc)
                return
            if not retry:
                return
            self._metrics.state_conflicts.inc(len(retry))
            attempt += 1
            if time.monotonic() - began > CONTENTION_BUDGET:
                for item in retry:
                    results[item.index] = Unavailable(
                        f"user '{item.claim.user_id}' is changed by other decisions faster than this one can "
                        f"finish (for {CONTENTION_BUDGET:g}s); retry with the same request_id"
                    )
                return
            if attempt > 2:
                await asyncio.sleep(random.uniform(0, min(0.05, 0.002 * 2**attempt)))
            todo = retry

    async def _decide_round(
        self,
        todo: list[_Item],
        results: list[PushAnswer | HeraldError | None],
        policy: Policy,
        campaign: Admit | None = None,
    ) -> list[_Item]:
        """Read, decide and commit ``todo``; the items whose user changed meanwhile."""
        views = await self._store.read_users(
            [UserRead(i.claim.user_id, i.idem, index=campaign is None) for i in todo],
            policy.defaults.idempotency_window,
        )
        # One log line a decision for a single push; one a round for a batch (a part of
        # a PushBatch, a campaign's chunk: a million users must not write a million lines).
        single = len(todo) == 1
        now = self._clock.now()
        switches = self._switches.current()
        down = self._down()
        keep = keep_for(policy)
        groups: dict[str, list[tuple[_Item, UserView]]] = defaultdict(list)
        for item, view in zip(todo, views, strict=True):
            admitted = True if campaign is None else campaign(item.claim.user_id, view.profile)
            if view.idem is IdemState.SAME:
                # A campaign's user answered before is counted whatever the profile says
                # now (a run resumed after its decisions were committed), except in a
                # later step than the one that decided them.
                if admitted is not None:
                    assert view.answer is not None
                    results[item.index] = view.answer
            elif view.idem is IdemState.CONFLICT:
                if admitted is not None:
                    results[item.index] = _reused(item.claim.request_id)
            elif admitted is not False:
                groups[item.claim.user_id].append((item, view))
        changes: list[Change] = []
        decided: list[list[tuple[_Item, Decision, PushAnswer]]] = []
        for user_id, members in groups.items():
            view = members[0][1]
            if view.profile is not None and campaign is None:
                # Kept for deciding a caller's push fail-open; a campaign's million
                # profiles would only push those out.
                self._recent.put(user_id, view.profile)
            state, changed, new, mine = view.state, False, [], []
            due: datetime | None = None
            funnel: list[tuple[str, str]] = []
            for item, _ in members:
                self._name(item)
                ctx = Context(policy, view.profile, state, switches, now, down)
                decision = decide_arrival(item.claim, item.message_id, ctx)
                if decision.mutations:
                    state = apply_mutations(state, decision.mutations, now, keep)
                    changed = True
                    hold = _due(decision.mutations)
                    due = hold if due is None or (hold is not None and hold < due) else due
                answer = self._answer(item, decision, policy)
                job = (
                    Job(item.message_id, item.claim, decision.plan, now)
                    if decision.outcome is Outcome.ACCEPTED
                    else None
                )
                record = self._record(item.claim, item.message_id, decision, policy, now)
                new.append(NewMessage(record, item.idem, answer, job))
                mine.append((item, decision, answer))
                if item.claim.campaign_id:
                    funnel.append((item.claim.campaign_id, field_of(item.claim.variant, DECIDED, decision)))
            changes.append(
                Change(
                    user_id, view.state.version, state if changed else None, tuple(new), due=due, funnel=tuple(funnel)
                )
            )
            decided.append(mine)
        retry: list[_Item] = []
        outcomes = await self._store.commit(changes, lifetimes(policy, campaign is not None)) if changes else []
        # What this round decided for good: a claim whose user changed meanwhile is
        # decided (and counted) in a later round.
        tally: dict[str, int] = {}
        for outcome, mine in zip(outcomes, decided, strict=True):
            if outcome is not Committed.OK:
                retry += [item for item, _, _ in mine]
                continue
            for item, decision, answer in mine:
                results[item.index] = answer
                self._count(item.claim, decision)
                if single:
                    self._log(item.claim, item.message_id, decision)
                else:
                    name = decision.outcome.value if decision.reason is None else decision.reason.value
                    tally[name] = tally.get(name, 0) + 1
        if tally:
            log.info("decisions", count=sum(tally.values()), outcomes=tally)
        return retry

    def _name(self, item: _Item) -> None:
        """The claim's message id, made when it is first decided (its shard is its
        user's: the message's keys live beside the user's)."""
        if not item.message_id:
            item.message_id = new_message_id(shard_of(item.claim.user_id, self._store.shards))

    def _answer(self, item: _Item, decision: Decision, policy: Policy) -> PushAnswer:
        return PushAnswer(
            message_id=item.message_id,
            category=item.claim.category,
            outcome=decision.outcome,
            reason=decision.reason,
            detail=decision.detail,
            plan=decision.plan,
            scheduled_at=decision.scheduled_at,
            policy_version=policy.version,
        )

    def _record(
        self, claim: Claim, message_id: str, decision: Decision, policy: Policy, now: datetime
    ) -> MessageRecord:
        status = status_of(decision)
        return MessageRecord(
            message_id=message_id,
            request_id=claim.request_id,
            user_id=claim.user_id,
            business_unit=claim.bu,
            scenario=claim.scenario,
            category=claim.category,
            campaign_id=claim.campaign_id,
            outcome=decision.outcome,
            reason=decision.reason,
            detail=decision.detail,
            channel_plan=decision.plan,
            scheduled_at=decision.scheduled_at,
            created_at=now,
            status=status,
            policy_version=policy.version,
            params=dict(claim.params),
            content={}
            if claim.content is None
            else {"title": claim.content.title, "body": claim.content.body, "url": claim.content.url},
            priority=claim.priority,
            dedup_key=claim.dedup_key,
            deadline=claim.deadline,
            trace=decision.trace,
            timeline=(TimelineEntry(now, status, detail=decision.detail),),
            variant=claim.variant,
        )

    def _log(self, claim: Claim, message_id: str, decision: Decision) -> None:
        log.info(
            "decision",
            request_id=claim.request_id,
            bu=claim.bu,
            message_id=message_id,
            user_ref=user_ref(claim.user_id),
            scenario=claim.scenario,
            category=claim.category.value,
            outcome=decision.outcome.value,
            reason=None if decision.reason is None else decision.reason.value,
        )

    def _count(self, claim: Claim, decision: Decision) -> None:
        self._metrics.decision(claim.bu, claim.category, decision.outcome, decision.reason)

    # --- without the store -----------------------------------------------------------
    async def _fail_open(
        self, todo: list[_Item], results: list[PushAnswer | HeraldError | None], cause: StoreUnavailable
    ) -> None:
        """The store does not answer: claims whose category's policy says fail open are
        decided without state (no caps, dedup or idempotency) on the user's profile as
        this process last saw it, spooled to local disk (handed to the store and the
        queue when it is back), and answered; the others get the store's error."""
        policy = self._policies.current
        now = self._clock.now()
        spooled: list[tuple[_Item, Decision, Spooled]] = []
        for item in todo:
            claim = item.claim
            if policy.categories[claim.category].fail_mode != "open" or self._spool is None:
                results[item.index] = cause
                continue
            profile = self._recent.get(claim.user_id)
            if profile is None:
                results[item.index] = StoreUnavailable(
                    f"{cause.message}; failing open needs the user's profile and this process has not seen "
                    f"user '{claim.user_id}' recently"
                )
                continue
            ctx = Context(policy, profile, UserState(), self._switches.current(), now, self._down())
            self._name(item)
            decision = decide_arrival(claim, item.message_id, ctx)
            if decision.outcome is Outcome.SCHEDULED:
                results[item.index] = StoreUnavailable(
                    f"{cause.message}; a held claim cannot be kept without the store"
                )
                continue
            detail = f"fail-open (state store unreachable; caps, dedup and idempotency not checked): {decision.detail}"
            decision = Decision(decision.outcome, decision.reason, detail, decision.plan, None, decision.trace)
            job = Job(item.message_id, claim, decision.plan, now) if decision.outcome is Outcome.ACCEPTED else None
            record = self._record(claim, item.message_id, decision, policy, now)
            spooled.append((item, decision, Spooled(record, job)))
        if not spooled:
            return
        assert self._spool is not None
        try:
            await self._spool.append([s for _, _, s in spooled])
        except OSError as exc:
            log.error("spool_write_failed", error=str(exc))
            for item, _, _ in spooled:
                results[item.index] = StoreUnavailable(f"{cause.message}; and the local spool cannot be written")
            return
        for item, decision, _ in spooled:
            results[item.index] = self._answer(item, decision, policy)
            self._metrics.fail_open.labels(item.claim.category.value).inc()
            self._count(item.claim, decision)
            log.warning(
                "decision_fail_open",
                request_id=item.claim.request_id,
                bu=item.claim.bu,
                message_id=item.message_id,
                user_ref=user_ref(item.claim.user_id),
                category=item.claim.category.value,
                outcome=decision.outcome.value,
                error=cause.message,
            )

    # --- explaining ------------------------------------------------------------------
    async def explain(self, bu: str, request: PushInput, at: datetime | None) -> Decision:
        """What would be decided for ``request`` at ``at`` (default now) on the current
        state, with the user's caps, counters and rivals, and what would become of a
        held claim when its pool is decided; no state changes, nothing sent."""
        policy = self._policies.current
        at = at or self._clock.now()
        claim = validate_push(bu, request, policy, at)
        [view] = await self._store.read_users([UserRead(claim.user_id)], policy.defaults.idempotency_window)
        held = await self._held_claims(view.state)
        ctx = Context(policy, view.profile, view.state, self._switches.current(), at, self._down())
        return explain_arrival(claim, ctx, held)

    async def _held_claims(self, state: UserState, due_by: datetime | None = None) -> list[HeldClaim]:
        wanted = [h for h in state.held if due_by is None or h.due <= due_by]
        records = await self._store.get_messages([h.message_id for h in wanted])
        return [
            HeldClaim(r.message_id, claim_of(r), r.created_at, h.pooled)
            for h, r in zip(wanted, records, strict=True)
            if r is not None
        ]

    # --- releases --------------------------------------------------------------------
    async def release_users(
        self, user_ids: Sequence[str], ending: frozenset[str] = frozenset()
    ) -> dict[str, datetime | None]:
        """Decide the due held claims of each user (one read, one commit for all), and
        at once those of the cancelled campaigns ``ending`` (they end CANCELLED); returns
        when each user's next held claim is due."""
        async with self._users.hold_many(user_ids):
            policy = self._policies.current
            todo = list(user_ids)
            nexts: dict[str, datetime | None] = {}
            began = time.monotonic()
            while todo:
                todo = await self._release_round(todo, nexts, policy, ending)
                if todo:
                    self._metrics.state_conflicts.inc(len(todo))
                    if time.monotonic() - began > CONTENTION_BUDGET:
                        raise Unavailable(f"{len(todo)} users changed under their releases for {CONTENTION_BUDGET:g}s")
            return nexts

    async def _release_round(
        self, user_ids: list[str], nexts: dict[str, datetime | None], policy: Policy, ending: frozenset[str]
    ) -> list[str]:
        views = await self._store.read_users([UserRead(u) for u in user_ids], policy.defaults.idempotency_window)
        now = self._clock.now()
        # Ending a campaign's claims: every held claim is read to find them.
        looked = {v.user_id: [h for h in v.state.held if ending or h.due <= now] for v in views}
        wanted = [h.message_id for v in views for h in looked[v.user_id]]
        records = dict(zip(wanted, await self._store.get_messages(wanted), strict=True))
        due = {
            user: [
                h
                for h in claims
                if h.due <= now or ((r := records[h.message_id]) is not None and r.campaign_id in ending)
            ]
            for user, claims in looked.items()
        }
        keep = keep_for(policy)
        switches = self._switches.current()
        cancelled = await self._cancelled({r.campaign_id for r in records.values() if r is not None and r.campaign_id})
        changes: list[Change] = []
        verdicts_of: list[list[tuple[MessageRecord, Decision]]] = []
        for view in views:
            if not due[view.user_id]:
                nexts[view.user_id] = view.state.next_due()
                continue
            gone: list[Mutation] = [Unhold(h.message_id) for h in due[view.user_id] if records[h.message_id] is None]
            held = [
                HeldClaim(r.message_id, claim_of(r), r.created_at, h.pooled)
                for h in due[view.user_id]
                if (r := records[h.message_id]) is not None
            ]
            ctx = Context(policy, view.profile, view.state, switches, now, self._down(), cancelled)
            verdicts = decide_release(held, ctx)
            mutations = [*gone, *(m for _, d in verdicts for m in d.mutations)]
            state = apply_mutations(view.state, mutations, now, keep)
            by_id = {h.message_id: r for h in due[view.user_id] if (r := records[h.message_id]) is not None}
            updates = tuple(self._update(by_id[mid], d, now) for mid, d in verdicts)
            funnel = tuple(
                (by_id[mid].campaign_id, field_of(by_id[mid].variant, RELEASED, d))
                for mid, d in verdicts
                if by_id[mid].campaign_id and d.outcome is not Outcome.SCHEDULED
            )
            changes.append(
                Change(view.user_id, view.state.version, state, updates=updates, due=_due(mutations), funnel=funnel)
            )
            verdicts_of.append([(by_id[mid], d) for mid, d in verdicts])
            nexts[view.user_id] = state.next_due()
        retry = []
        outcomes = await self._store.commit(changes, lifetimes(policy)) if changes else []
        for change, outcome, released in zip(changes, outcomes, verdicts_of, strict=True):
            if outcome is not Committed.OK:
                retry.append(change.user_id)
                continue
            for record, decision in released:
                if decision.outcome is not Outcome.SCHEDULED:
                    self._count(claim_of(record), decision)
                log.info(
                    "released",
                    message_id=record.message_id,
                    user_ref=user_ref(record.user_id),
                    bu=record.business_unit,
                    outcome=decision.outcome.value,
                    reason=None if decision.reason is None else decision.reason.value,
                )
        return retry

    async def _cancelled(self, campaign_ids: set[str]) -> frozenset[str]:
        if not campaign_ids:
            return frozenset()
        ids = sorted(campaign_ids)
        found = await self._store.get_campaigns(ids)
        return frozenset(c for c, got in zip(ids, found, strict=True) if got and got.state is CampaignState.CANCELLED)

    def _update(self, record: MessageRecord, decision: Decision, now: datetime) -> MessageUpdate:
        status = status_of(decision)
        kind = {Outcome.ACCEPTED: "released", Outcome.SCHEDULED: "carried"}.get(decision.outcome, status)
        current = Current(status, decision.outcome, decision.reason, decision.detail, decision.scheduled_at)
        job = None
        if decision.outcome is Outcome.ACCEPTED:
            job = Job(record.message_id, claim_of(record), decision.plan, now)
        return MessageUpdate(record.message_id, (TimelineEntry(now, kind, detail=decision.detail),), current, job)

    # --- reading -----------------------------------------------------------------------
    async def get_message(self, bu: str, message_id: str) -> MessageRecord:
        [record] = await self._store.get_messages([message_id]) if message_id else [None]
        if record is None or record.business_unit != bu:
            # Another unit's message is as unknown as a missing one.
            raise NotFound(
                f"no message '{message_id[:64]}' for business unit '{bu}' "
                "(unknown, another unit's, or older than the retention period)"
            )
        return record

    async def list_messages(self, bu: str, query: HistoryQuery) -> tuple[list[MessageRecord], str]:
        """A page of a user's messages of ``bu``, newest first, and the next page's token."""
        return await list_messages(self._store, bu, query)


def _reused(request_id: str) -> AlreadyExists:
    return AlreadyExists(
        f"request_id '{request_id}' was already used with a different body; use a new request_id for a new request"
    )
