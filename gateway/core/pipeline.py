"""The path of a push request: validate and classify, idempotency, decide, keep the
decision, hand the winners to delivery. The only part of ``core`` that does I/O.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import orjson

from gateway.clock import Clock
from gateway.core.caps import retention
from gateway.core.claims import Claim, Content, PushInput
from gateway.core.decide import Context, Decision, HeldClaim, decide_arrival, decide_release
from gateway.core.keyed_lock import KeyedLock
from gateway.core.ratelimit import RateLimiter
from gateway.core.state import Hold, Mutation, Unhold, UserState
from gateway.core.validate import validate_push
from gateway.delivery.jobs import Job
from gateway.delivery.queue import DeliveryQueue
from gateway.domain import Category, Channel, Outcome, Reason
from gateway.errors import AlreadyExists, HeraldError, NotFound, ResourceExhausted, StoreUnavailable, Unavailable
from gateway.ids import new_message_id
from gateway.killswitches import KillSwitches
from gateway.logs import get_logger
from gateway.metrics import Metrics
from gateway.policy.holder import PolicyHolder
from gateway.profiles import UserProfile
from gateway.store.base import IdemKey, IdemState, Store
from gateway.store.records import Final, MessageRecord, TimelineEntry

log = get_logger(__name__)

PENDING_WAIT_SECONDS = 2.0
MAX_TRIES = 8
PENDING_POLL_SECONDS = 0.02


@dataclass(frozen=True)
class PushAnswer:
    message_id: str
    category: Category
    outcome: Outcome
    reason: Reason | None
    detail: str
    plan: tuple[Channel, ...]
    scheduled_at: datetime | None
    policy_version: str

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "m": self.message_id,
                "c": str(self.category),
                "o": str(self.outcome),
                "r": None if self.reason is None else str(self.reason),
                "d": self.detail,
                "p": [str(c) for c in self.plan],
                "s": None if self.scheduled_at is None else self.scheduled_at.isoformat(),
                "v": self.policy_version,
            }
        )

    @staticmethod
    def decode(raw: bytes) -> PushAnswer:
        data = orjson.loads(raw)
        return PushAnswer(
            message_id=data["m"],
            category=Category(data["c"]),
            outcome=Outcome(data["o"]),
            reason=None if data["r"] is None else Reason(data["r"]),
            detail=data["d"],
            plan=tuple(Channel(c) for c in data["p"]),
            scheduled_at=None if data["s"] is None else datetime.fromisoformat(data["s"]),
            policy_version=data["v"],
        )


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
    )


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


class PushPipeline:
    def __init__(
        self,
        store: Store,
        policies: PolicyHolder,
        switches: KillSwitches,
        queue: DeliveryQueue,
        clock: Clock,
        metrics: Metrics,
        limiter: RateLimiter,
        down: Callable[[], frozenset[Channel]] = frozenset,
    ) -> None:
        self._down = down
        self._store = store
        self._policies = policies
        self._switches = switches
        self._queue = queue
        self._clock = clock
        self._metrics = metrics
        self._limiter = limiter
        self._users = KeyedLock()
        self._recent = RecentProfiles()

    async def push(self, bu: str, request: PushInput) -> PushAnswer:
        policy = self._policies.current
        now = self._clock.now()
        limit = policy.business_units[bu].rate_limit
        if limit is not None and not self._limiter.allow(bu, limit.requests, limit.per.total_seconds()):
            raise ResourceExhausted(
                f"business unit '{bu}' is over its rate limit of {limit.requests} requests per "
                f"{limit.per.total_seconds():g}s; slow down or batch with PushBatch"
            )
        claim = validate_push(bu, request, policy, now)
        try:
            return await self._push_stateful(bu, request, claim)
        except StoreUnavailable as exc:
            self._metrics.store_errors.labels("push").inc()
            if policy.categories[claim.category].fail_mode != "open":
                raise
            return await self._fail_open(claim, exc)

    async def _push_stateful(self, bu: str, request: PushInput, claim: Claim) -> PushAnswer:
        policy = self._policies.current
        idem = IdemKey(bu, request.request_id, request.fingerprint())
        window = policy.defaults.idempotency_window
        seen = await self._store.idem_begin(idem, window)
        waited = 0.0
        while seen.state is IdemState.PENDING and waited < PENDING_WAIT_SECONDS:
            await asyncio.sleep(PENDING_POLL_SECONDS)
            waited += PENDING_POLL_SECONDS
            seen = await self._store.idem_begin(idem, window)
        if seen.state is IdemState.SAME:
            assert seen.answer is not None
            return PushAnswer.decode(seen.answer)
        if seen.state is IdemState.CONFLICT:
            raise AlreadyExists(
                f"request_id '{request.request_id}' was already used with a different body; "
                "use a new request_id for a new request"
            )
        if seen.state is IdemState.PENDING:
            raise Unavailable(
                f"request_id '{request.request_id}' is still being decided by another call; retry shortly"
            )
        try:
            async with self._users.hold(claim.user_id):
                return await self._decide_new(claim, idem)
        except BaseException:
            try:
                await self._store.idem_abort(idem)
            except HeraldError:
                log.warning("idempotency_abort_failed", request_id=request.request_id)
            raise

    def _context(self, profile: UserProfile | None, state: UserState, now: datetime) -> Context:
        return Context(self._policies.current, profile, state, self._switches.current(), now, self._down())

    async def _decide_new(self, claim: Claim, idem: IdemKey) -> PushAnswer:
        policy = self._policies.current
        keep = retention(policy)
        message_id = new_message_id()
        dedup = (claim.bu, claim.dedup_key) if claim.dedup_key else None
        for _ in range(MAX_TRIES):
            now = self._clock.now()
            profile, state = await self._store.load_user(claim.user_id, dedup, now - keep)
            if profile is not None:
                self._recent.put(claim.user_id, profile)
            decision = decide_arrival(claim, message_id, self._context(profile, state, now))
            if not decision.mutations or await self._store.apply(
                claim.user_id, state.version, decision.mutations, now, keep
            ):
                break
            self._metrics.state_conflicts.inc()
        else:
            raise Unavailable(
                f"user '{claim.user_id}' changed under {MAX_TRIES} concurrent decisions in a row; retry shortly"
            )
        answer = PushAnswer(
            message_id=message_id,
            category=claim.category,
            outcome=decision.outcome,
            reason=decision.reason,
            detail=decision.detail,
            plan=decision.plan,
            scheduled_at=decision.scheduled_at,
            policy_version=policy.version,
        )
        status = status_of(decision)
        record = MessageRecord(
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
        )
        try:
            await self._store.save_decision(
                record, idem, answer.encode(), policy.defaults.idempotency_window, policy.defaults.message_retention
            )
        except StoreUnavailable as exc:
            # The decision is made and the user's state changed: deliver it all the
            # same; only GetMessage will not find it.
            self._metrics.store_errors.labels("save_decision").inc()
            log.error("decision_not_recorded", message_id=message_id, request_id=claim.request_id, error=exc.message)
        if decision.outcome is Outcome.ACCEPTED:
            assert profile is not None
            await self._queue.put(Job(message_id, claim, decision.plan, profile, now))
        self._count(claim, decision)
        log.info(
            "decision",
            request_id=claim.request_id,
            bu=claim.bu,
            message_id=message_id,
            scenario=claim.scenario,
            category=str(claim.category),
            outcome=str(decision.outcome),
            reason=None if decision.reason is None else str(decision.reason),
            detail=decision.detail,
        )
        return answer

    async def _fail_open(self, claim: Claim, cause: StoreUnavailable) -> PushAnswer:
        """The store does not answer and the category's policy says fail open: decide
        without state (no caps, dedup or idempotency) on the user's profile as this
        process last saw it, and send."""
        profile = self._recent.get(claim.user_id)
        if profile is None:
            raise StoreUnavailable(
                f"{cause.message}; failing open needs the user's profile and this process has not seen "
                f"user '{claim.user_id}' recently"
            )
        policy = self._policies.current
        now = self._clock.now()
        message_id = new_message_id()
        decision = decide_arrival(claim, message_id, self._context(profile, UserState(), now))
        if decision.outcome is Outcome.SCHEDULED:
            raise StoreUnavailable(f"{cause.message}; a held claim cannot be kept without the store")
        detail = f"fail-open (state store unreachable; caps, dedup and idempotency not checked): {decision.detail}"
        if decision.outcome is Outcome.ACCEPTED:
            await self._queue.put(Job(message_id, claim, decision.plan, profile, now))
        self._metrics.fail_open.labels(str(claim.category)).inc()
        self._count(claim, decision)
        log.warning(
            "decision_fail_open",
            request_id=claim.request_id,
            bu=claim.bu,
            message_id=message_id,
            category=str(claim.category),
            outcome=str(decision.outcome),
            error=cause.message,
        )
        return PushAnswer(
            message_id=message_id,
            category=claim.category,
            outcome=decision.outcome,
            reason=decision.reason,
            detail=detail,
            plan=decision.plan,
            scheduled_at=None,
            policy_version=policy.version,
        )

    async def explain(self, bu: str, request: PushInput, at: datetime | None) -> Decision:
        """What would be decided for ``request`` at ``at`` (default now) on the current
        state; no state changes, nothing sent."""
        policy = self._policies.current
        at = at or self._clock.now()
        claim = validate_push(bu, request, policy, at)
        dedup = (claim.bu, claim.dedup_key) if claim.dedup_key else None
        profile, state = await self._store.load_user(claim.user_id, dedup, at - retention(policy))
        return decide_arrival(claim, "m_explain", self._context(profile, state, at))

    def _count(self, claim: Claim, decision: Decision) -> None:
        self._metrics.decisions.labels(
            claim.bu,
            str(claim.category),
            str(decision.outcome),
            "" if decision.reason is None else str(decision.reason),
        ).inc()

    async def release_user(self, user_id: str) -> datetime | None:
        """Decide the user's held claims that are due; returns when the next one is."""
        async with self._users.hold(user_id):
            return await self._release_user(user_id)

    async def _release_user(self, user_id: str) -> datetime | None:
        policy = self._policies.current
        keep = retention(policy)
        for _ in range(MAX_TRIES):
            now = self._clock.now()
            profile, state = await self._store.load_user(user_id, None, now - keep)
            due = [h for h in state.held if h.due <= now]
            if not due:
                return state.next_due()
            records = await self._store.get_messages([h.message_id for h in due])
            gone: list[Mutation] = [Unhold(h.message_id) for h, r in zip(due, records, strict=True) if r is None]
            held = [HeldClaim(r.message_id, claim_of(r), r.created_at) for r in records if r is not None]
            verdicts = decide_release(held, self._context(profile, state, now))
            mutations = [*gone, *(m for _, d in verdicts for m in d.mutations)]
            if await self._store.apply(user_id, state.version, mutations, now, keep):
                break
            self._metrics.state_conflicts.inc()
        else:
            raise Unavailable(f"user '{user_id}' changed under {MAX_TRIES} concurrent releases in a row")
        by_id = {r.message_id: r for r in records if r is not None}
        for message_id, decision in verdicts:
            await self._after_release(by_id[message_id], decision, profile, now)
        touched = {m.message_id for m in mutations if isinstance(m, Hold | Unhold)}
        remaining = [h.due for h in state.held if h.message_id not in touched]
        remaining += [m.due for m in mutations if isinstance(m, Hold)]
        return min(remaining, default=None)

    async def _after_release(
        self, record: MessageRecord, decision: Decision, profile: UserProfile | None, now: datetime
    ) -> None:
        status = status_of(decision)
        kind = {Outcome.ACCEPTED: "released", Outcome.SCHEDULED: "carried"}.get(decision.outcome, status)
        final = (
            None if decision.outcome is Outcome.SCHEDULED else Final(decision.outcome, decision.reason, decision.detail)
        )
        await self._store.add_events(
            record.message_id,
            [TimelineEntry(now, kind, detail=decision.detail)],
            status,
            self._policies.current.defaults.message_retention,
            final=final,
        )
        claim = claim_of(record)
        if decision.outcome is Outcome.ACCEPTED:
            assert profile is not None
            await self._queue.put(Job(record.message_id, claim, decision.plan, profile, now))
        if decision.outcome is not Outcome.SCHEDULED:
            self._count(claim, decision)
        log.info(
            "released",
            message_id=record.message_id,
            bu=claim.bu,
            outcome=str(decision.outcome),
            reason=None if decision.reason is None else str(decision.reason),
            detail=decision.detail,
        )

    async def get_message(self, bu: str, message_id: str) -> MessageRecord:
        record = await self._store.get_message(message_id) if message_id else None
        if record is None or record.business_unit != bu:
            # Another unit's message is as unknown as a missing one.
            raise NotFound(
                f"no message '{message_id[:64]}' for business unit '{bu}' "
                "(unknown, another unit's, or older than the retention period)"
            )
        return record
