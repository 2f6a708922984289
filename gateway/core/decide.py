"""Arbitration: what becomes of a claim, as plain code over values (docs/design.md
"Arbitration"). No I/O; the clock is an argument.

Rules apply in this order, and the first that suppresses is the reason:
kill switch, deadline, opt-out and reachability, dedup, not_before, quiet hours,
competing claims (categories that arbitrate wait in the user's pool for a send window),
caps.

``decide_arrival`` decides a claim as it arrives; ``decide_release`` decides the
claims of one user whose time has come (deferred, scheduled, or pooled for a send
window, where they compete as a pool: the best scores win as far as the caps allow,
arrival order never decides). Both return the mutations to apply to the user's state
and a trace (data; ``trace.render`` makes sentences of it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

import msgspec

from gateway.core.caps import Blocked, Rule, Usage, pick_channel, rules_for
from gateway.core.killswitch import blocking_switch
from gateway.core.profile_rules import compute_tier, opted_out
from gateway.core.route import Skip, route
from gateway.core.times import open_windows, period_around, release_time, spread, zone
from gateway.durations import format_duration
from gateway.policy.model import Policy
from gateway.values.campaigns import HOLDOUT
from gateway.values.claims import Claim
from gateway.values.decisions import Decision
from gateway.values.domain import Category, Channel, Outcome, Reason
from gateway.values.profiles import UserProfile
from gateway.values.records import KillSwitch, Step
from gateway.values.state import Hold, MarkDedup, Mutation, Reserve, SentEntry, Unhold, UserState

# A claim a kill switch stops while held is looked at again this often (and once more
# just before its deadline), and sent if the switch was cleared meanwhile.
KILL_RECHECK = timedelta(minutes=1)
LAST_LOOK = timedelta(seconds=1)


@dataclass
class Context:
    """Everything a decision reads (one per decision: a plain class, cheap to make)."""

    policy: Policy
    profile: UserProfile | None
    state: UserState
    switches: Sequence[KillSwitch]
    now: datetime
    # Channels whose provider's breaker is open (in this process): tried last.
    down: frozenset[Channel] = frozenset()
    # Campaigns cancelled: their held claims end when released.
    cancelled: frozenset[str] = frozenset()
    # Worked out when first read (by hand: functools.cached_property takes a lock on
    # every read before Python 3.12, and a campaign makes a million contexts).
    _tz: ZoneInfo | None = field(default=None, init=False, repr=False, compare=False)
    _tier: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def tz(self) -> ZoneInfo:
        if self._tz is None:
            profile = self.profile
            self._tz = zone(profile.timezone if profile and profile.timezone else self.policy.defaults.timezone)
        return self._tz

    @property
    def tier(self) -> str:
        if self._tier is None:
            profile = self.profile
            self._tier = (
                self.policy.tiers.default if profile is None else compute_tier(profile.rfm, self.policy.tiers, self.now)
            )
        return self._tier

    def at(self, now: datetime, state: UserState | None = None) -> Context:
        """The same user and policy at another time (explain's predictions)."""
        return Context(self.policy, self.profile, state or self.state, self.switches, now, self.down, self.cancelled)


@dataclass(frozen=True)
class HeldClaim:
    message_id: str
    claim: Claim
    created_at: datetime
    pooled: bool = False


@dataclass
class _Trace:
    steps: list[Step] = field(default_factory=list)

    def add(self, code: str, *args: object) -> None:
        self.steps.append(Step(code, args))

    def done(
        self,
        outcome: Outcome,
        reason: Reason | None,
        detail: str,
        *,
        plan: tuple[Channel, ...] = (),
        at: datetime | None = None,
        mutations: Sequence[Mutation] = (),
    ) -> Decision:
        self.add("final", str(outcome), None if reason is None else str(reason), detail)
        return Decision(outcome, reason, detail, plan, at, tuple(self.steps), tuple(mutations))


def _local(moment: datetime, tz: ZoneInfo) -> str:
    """The time as the user's clock shows it, to the minute (for details)."""
    return _local_minute(math.floor(moment.timestamp()) // 60, tz)


@lru_cache(maxsize=4096)
def _local_minute(minute: int, tz: ZoneInfo) -> str:
    # A campaign's users are held to a handful of minutes: each formatted once.
    return f"{datetime.fromtimestamp(minute * 60, tz):%Y-%m-%d %H:%M} {tz.key}"


def score(claim: Claim, policy: Policy, tier: str) -> tuple[float, tuple[object, ...]]:
    """A competing claim's score, and the figures it was made of (a ``score`` step)."""
    weight = policy.business_units[claim.bu].weight
    targets = policy.scenarios[claim.scenario].target_tiers
    fit = 1.0 if not targets or tier in targets else 0.5
    value = weight * (0.5 + claim.priority / 100) * fit
    return value, (value, weight, claim.priority, fit, tier, bool(targets))


def _gate(claim: Claim, ctx: Context, trace: _Trace) -> Decision | tuple[Channel, ...]:
    """Kill switch, deadline, opt-out and reachability: a final decision, or the plan."""
    switch = blocking_switch(
        ctx.switches,
        now=ctx.now,
        category=str(claim.category),
        bu=claim.bu,
        scenario=claim.scenario,
        campaign_id=claim.campaign_id,
    )
    if switch is not None:
        return trace.done(Outcome.SUPPRESSED, Reason.KILL_SWITCH, f"stopped by {switch.describe()}")
    trace.add("switch")
    if claim.deadline is not None and claim.deadline <= ctx.now:
        return trace.done(Outcome.SUPPRESSED, Reason.EXPIRED, f"deadline {claim.deadline.isoformat()} has passed")
    if ctx.profile is None:
        return trace.done(
            Outcome.SUPPRESSED,
            Reason.NO_REACHABLE_CHANNEL,
            f"user '{claim.user_id}' has no profile; create it with ProfileService.UpsertUser or `herald users import`",
        )
    opt_out = opted_out(ctx.profile, claim.category)
    if opt_out is not None:
        source = f" ({opt_out.source})" if opt_out.source else ""
        return trace.done(Outcome.SUPPRESSED, Reason.OPTED_OUT, f"user opted out of {claim.category} messages{source}")
    plan = route(
        claim.scenario, claim.category, ctx.profile, ctx.policy, ctx.switches, ctx.now, ctx.state.sent, ctx.down
    )
    if not plan.plan:
        reasons = {why for _, why in plan.skipped}
        if Skip.KILLED in reasons:
            return trace.done(
                Outcome.SUPPRESSED, Reason.KILL_SWITCH, f"every usable channel is stopped: {plan.explain()}"
            )
        if Skip.OPTED_OUT in reasons:
            return trace.done(
                Outcome.SUPPRESSED, Reason.OPTED_OUT, f"user opted out of every usable channel: {plan.explain()}"
            )
        return trace.done(
            Outcome.SUPPRESSED, Reason.NO_REACHABLE_CHANNEL, f"no channel reaches the user: {plan.explain()}"
        )
    trace.add("route", [str(c) for c in plan.plan], [[str(c), str(why)] for c, why in plan.skipped])
    return plan.plan


def _quiet_period(claim: Claim, ctx: Context) -> tuple[time, time] | None:
    quiet = ctx.policy.categories[claim.category].quiet_hours
    if quiet.mode == "exempt" or quiet.start is None or quiet.end is None:
        return None
    return quiet.start, quiet.end


def limit_of(claim: Claim, created_at: datetime, policy: Policy) -> datetime:
    """The latest a claim may still be sent: its deadline, else the policy's max hold."""
    return claim.deadline or created_at + policy.defaults.max_hold


def _quiet(
    claim: Claim, ctx: Context, trace: _Trace, plan: tuple[Channel, ...], created_at: datetime, message_id: str
) -> Decision | None:
    """Quiet hours in the user's time zone: None when they do not apply now."""
    quiet = ctx.policy.categories[claim.category].quiet_hours
    period = _quiet_period(claim, ctx)
    if period is None:
        trace.add("quiet-exempt", str(claim.category))
        return None
    around = period_around(period[0], period[1], ctx.now, ctx.tz)
    if around is None:
        trace.add("quiet-off", f"{period[0]:%H:%M}", f"{period[1]:%H:%M}", ctx.now.timestamp(), ctx.tz.key)
        return None
    if quiet.mode == "drop":
        return trace.done(
            Outcome.SUPPRESSED,
            Reason.QUIET_HOURS,
            f"quiet hours {period[0]:%H:%M}-{period[1]:%H:%M} in {ctx.tz.key}; {claim.category} is dropped then",
            mutations=[Unhold(message_id)],
        )
    span = min(ctx.policy.defaults.release_spread, _awake(period) / 2)
    at = around[1] + spread(claim.user_id, span)
    if at > limit_of(claim, created_at, ctx.policy):
        return trace.done(
            Outcome.SUPPRESSED,
            Reason.EXPIRED,
            f"quiet hours until {_local(around[1], ctx.tz)} outlast the deadline",
            mutations=[Unhold(message_id)],
        )
    return trace.done(
        Outcome.SCHEDULED,
        None,
        f"quiet hours {period[0]:%H:%M}-{period[1]:%H:%M} in {ctx.tz.key}; deferred to {_local(at, ctx.tz)}",
        plan=plan,
        at=at,
        mutations=[Hold(message_id, at)],
    )


def _awake(period: tuple[time, time]) -> timedelta:
    """The length of the day outside a quiet period."""
    start = timedelta(hours=period[0].hour, minutes=period[0].minute)
    end = timedelta(hours=period[1].hour, minutes=period[1].minute)
    quiet = end - start if start < end else timedelta(days=1) - (start - end)
    return timedelta(days=1) - quiet


def _window_release(claim: Claim, ctx: Context, after: datetime) -> datetime | None:
    defaults = ctx.policy.defaults
    return release_time(
        defaults.send_windows,
        _quiet_period(claim, ctx),
        after,
        ctx.tz,
        collection_delay=defaults.collection_delay,
        spread_key=claim.user_id,
        spread_span=defaults.release_spread,
    )


def _pool_time(claim: Claim, ctx: Context, after: datetime) -> tuple[datetime | None, bool]:
    """When a claim that waits for a send window is decided, and whether it joins a
    pool already collecting. Inside an open window the user's first claim starts a
    collection period and every claim arriving before it ends joins it; before a
    window, every claim is released at the window's opening (plus the user's spread),
    which is the same time for all of them."""
    at = _window_release(claim, ctx, after)
    if at is None:
        return None, False
    pool = ctx.state.pool_due(ctx.now)
    if pool is not None and pool <= at:
        return pool, True
    return at, False


def _cap_verdict(
    claim: Claim, ctx: Context, plan: tuple[Channel, ...], entries: Sequence[SentEntry], trace: _Trace
) -> tuple[Channel | None, list[Blocked]]:
    rules = rules_for(ctx.policy, claim.category, claim.bu, ctx.tier)
    used = Usage(rules, entries, ctx.now, ctx.tz)
    channel, blocked = pick_channel(plan, used)
    shown = channel or plan[0]
    for index, rule in enumerate(rules):
        if rule.channel is None or rule.channel == shown:
            trace.add("cap", rule.label, rule.window_text, used.count(index), rule.limit)
    return channel, blocked


def _accept(
    claim: Claim,
    ctx: Context,
    trace: _Trace,
    plan: tuple[Channel, ...],
    channel: Channel,
    message_id: str,
    extra: Sequence[Mutation] = (),
) -> Decision:
    rest = plan[plan.index(channel) :]
    entry = SentEntry(message_id, ctx.now, claim.category, channel, claim.bu)
    return trace.done(
        Outcome.ACCEPTED,
        None,
        f"sending via {' then '.join(rest)}",
        plan=rest,
        mutations=[*extra, Reserve(entry)],
    )


def _blocked_text(blocked: Sequence[Blocked]) -> str:
    """The caps that blocked, each named once (the same rule can block several channels)."""
    seen: dict[str, None] = {}
    for block in blocked:
        seen.setdefault(block.describe())
    return "; ".join(seen)


def _capped(claim: Claim, trace: _Trace, blocked: Sequence[Blocked], extra: Sequence[Mutation] = ()) -> Decision:
    reason = Reason.SAFETY_CAP if claim.category is Category.BASIC else Reason.FREQUENCY_CAP
    return trace.done(Outcome.SUPPRESSED, reason, _blocked_text(blocked), mutations=extra)


def decide_arrival(claim: Claim, message_id: str, ctx: Context) -> Decision:
    trace = _Trace()
    if claim.variant == HOLDOUT:
        # Kept out on purpose, whatever else holds: the holdout must look like the
        # treated users (reachable or not) for the lift to mean anything.
        return trace.done(Outcome.SUPPRESSED, Reason.HOLDOUT, f"in the holdout of campaign '{claim.campaign_id}'")
    gate = _gate(claim, ctx, trace)
    if isinstance(gate, Decision):
        return gate
    plan = gate
    marks: list[Mutation] = []
    if claim.dedup_key:
        window = ctx.policy.categories[claim.category].dedup_window
        if ctx.state.seen(claim.bu, claim.dedup_key, ctx.now):
            return trace.done(
                Outcome.SUPPRESSED,
                Reason.DUPLICATE,
                f"dedup_key '{claim.dedup_key[:64]}' of {claim.bu} was seen within {format_duration(window)}",
            )
        trace.add("dedup", claim.dedup_key[:64], format_duration(window))
        marks.append(MarkDedup(claim.bu, claim.dedup_key, window))
    if claim.not_before is not None and claim.not_before > ctx.now:
        return trace.done(
            Outcome.SCHEDULED,
            None,
            f"held until not_before {_local(claim.not_before, ctx.tz)}",
            plan=plan,
            at=claim.not_before,
            mutations=[*marks, Hold(message_id, claim.not_before)],
        )
    quiet = _quiet(claim, ctx, trace, plan, ctx.now, message_id)
    if quiet is not None:
        if quiet.outcome is Outcome.SCHEDULED:
            return msgspec.structs.replace(quiet, mutations=(*marks, *quiet.mutations))
        return msgspec.structs.replace(quiet, mutations=())
    if ctx.policy.arbitrates(claim.category):
        at, joined = _pool_time(claim, ctx, ctx.now)
        if at is None or at > limit_of(claim, ctx.now, ctx.policy):
            return trace.done(Outcome.SUPPRESSED, Reason.EXPIRED, "no send window opens before the deadline")
        trace.add("pool", at.timestamp(), ctx.tz.key, joined)
        return trace.done(
            Outcome.SCHEDULED,
            None,
            f"waits in the user's pool for the send window; decided {_local(at, ctx.tz)}",
            plan=plan,
            at=at,
            mutations=[*marks, Hold(message_id, at, pooled=True)],
        )
    channel, blocked = _cap_verdict(claim, ctx, plan, ctx.state.sent, trace)
    if channel is None:
        return _capped(claim, trace, blocked)
    return _accept(claim, ctx, trace, plan, channel, message_id, marks)


def in_window(claim: Claim, ctx: Context) -> bool:
    windows = open_windows(ctx.policy.defaults.send_windows, _quiet_period(claim, ctx), ctx.now, ctx.tz)
    return any(start <= ctx.now < end for start, end in windows)


def _current_window_end(claim: Claim, ctx: Context) -> datetime:
    windows = open_windows(ctx.policy.defaults.send_windows, _quiet_period(claim, ctx), ctx.now, ctx.tz)
    return next((end for start, end in windows if start <= ctx.now < end), ctx.now)


def _kept(item: HeldClaim, gate: Decision, ctx: Context, trace: _Trace) -> Decision | None:
    """A switch keeps what it stops: held and looked at again, sent if the switch is
    cleared in time. None when there is no time left to look again."""
    last = limit_of(item.claim, item.created_at, ctx.policy) - LAST_LOOK
    again = min(ctx.now + KILL_RECHECK, last)
    if again <= ctx.now:
        return None
    detail = f"{gate.detail}; kept, looked at again {_local(again, ctx.tz)}"
    return trace.done(Outcome.SCHEDULED, None, detail, at=again, mutations=[Hold(item.message_id, again)])


@dataclass
class _Ready:
    item: HeldClaim
    plan: tuple[Channel, ...]
    trace: _Trace
    competes: bool
    value: float


def decide_release(held: Sequence[HeldClaim], ctx: Context) -> list[tuple[str, Decision]]:
    """Decide the claims of one user that are due now. Claims of categories that
    arbitrate compete as a pool: the best scores win as far as the caps allow; the
    others are carried to the next window while their deadline allows."""
    out: list[tuple[str, Decision]] = []
    ready: list[_Ready] = []
    for item in sorted(held, key=lambda h: (h.created_at, h.message_id)):
        claim, trace = item.claim, _Trace()
        trace.add("released", ctx.now.timestamp(), ctx.tz.key)
        if claim.campaign_id and claim.campaign_id in ctx.cancelled:
            ended = trace.done(
                Outcome.SUPPRESSED,
                Reason.CANCELLED,
                f"campaign '{claim.campaign_id}' was cancelled",
                mutations=[Unhold(item.message_id)],
            )
            out.append((item.message_id, ended))
            continue
        gate = _gate(claim, ctx, trace)
        if isinstance(gate, Decision) and gate.reason is Reason.KILL_SWITCH:
            kept = _kept(item, gate, ctx, _Trace(trace.steps[:-1]))
            if kept is not None:
                out.append((item.message_id, kept))
                continue
        if isinstance(gate, Decision):
            out.append((item.message_id, msgspec.structs.replace(gate, mutations=(Unhold(item.message_id),))))
            continue
        quiet = _quiet(claim, ctx, trace, gate, item.created_at, item.message_id)
        if quiet is not None:
            out.append((item.message_id, quiet))
            continue
        competes = ctx.policy.arbitrates(claim.category)
        if competes and not in_window(claim, ctx):
            at = _window_release(claim, ctx, ctx.now)
            if at is None or at > limit_of(claim, item.created_at, ctx.policy):
                decision = trace.done(
                    Outcome.SUPPRESSED,
                    Reason.EXPIRED,
                    "no send window opens before the deadline",
                    mutations=[Unhold(item.message_id)],
                )
            else:
                decision = trace.done(
                    Outcome.SCHEDULED,
                    None,
                    f"waits in the user's pool for the send window; decided {_local(at, ctx.tz)}",
                    plan=gate,
                    at=at,
                    mutations=[Hold(item.message_id, at, pooled=True)],
                )
            out.append((item.message_id, decision))
            continue
        value = float("inf")
        if competes:
            value, figures = score(claim, ctx.policy, ctx.tier)
            trace.add("score", *figures)
        ready.append(_Ready(item, gate, trace, competes, value))

    # Claims that do not compete go first, in arrival order; then the pool, best first.
    ready.sort(key=lambda r: (r.competes, -r.value, -r.item.claim.priority, r.item.created_at, r.item.message_id))
    entries = list(ctx.state.sent)
    winners: list[tuple[_Ready, Channel]] = []
    for entry in ready:
        item, claim, trace = entry.item, entry.item.claim, entry.trace
        channel, blocked = _cap_verdict(claim, ctx, entry.plan, entries, trace)
        if channel is not None:
            decision = _accept(claim, ctx, trace, entry.plan, channel, item.message_id, [Unhold(item.message_id)])
            entries.append(SentEntry(item.message_id, ctx.now, claim.category, channel, claim.bu))
            winners.append((entry, channel))
            out.append((item.message_id, decision))
            continue
        if not entry.competes:
            out.append((item.message_id, _capped(claim, trace, blocked, [Unhold(item.message_id)])))
            continue
        out.append((item.message_id, _lost(entry, blocked, winners, ctx)))
    return out


def _lost(
    entry: _Ready, blocked: Sequence[Blocked], winners: Sequence[tuple[_Ready, Channel]], ctx: Context
) -> Decision:
    """A competing claim the caps leave no room for: carried to the next window, or
    suppressed when there is none before its deadline."""
    item, claim, trace = entry.item, entry.item.claim, entry.trace
    blocking: set[Rule] = {b.rule for b in blocked}
    rivals = [
        (w, channel)
        for w, channel in winners
        if any(
            r.counts(SentEntry(w.item.message_id, ctx.now, w.item.claim.category, channel, w.item.claim.bu))
            for r in blocking
        )
    ]
    rival_text = ""
    if rivals:
        best = max(rivals, key=lambda w: w[0].value)[0]
        rival_text = (
            f"lost to {best.item.claim.scenario} of {best.item.claim.bu} (score {best.value:g} > {entry.value:g}); "
        )
        trace.add("rival", best.item.message_id, best.item.claim.scenario, best.value)
    caps = _blocked_text(blocked)
    next_at = _window_release(claim, ctx, _current_window_end(claim, ctx))
    if next_at is not None and next_at <= limit_of(claim, item.created_at, ctx.policy):
        return trace.done(
            Outcome.SCHEDULED,
            None,
            f"{rival_text}{caps}; carried to {_local(next_at, ctx.tz)}",
            plan=entry.plan,
            at=next_at,
            mutations=[Hold(item.message_id, next_at, pooled=True)],
        )
    reason = Reason.LOST_ARBITRATION if rivals else Reason.FREQUENCY_CAP
    return trace.done(
        Outcome.SUPPRESSED, reason, f"{rival_text}{caps}; no window left", mutations=[Unhold(item.message_id)]
    )
