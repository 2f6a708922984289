"""Arbitration: what becomes of a claim, as plain code over values (DESIGN.md
"Arbitration semantics"). No I/O; the clock is an argument.

Rules apply in this order, and the first that suppresses is the reason:
kill switch, deadline, opt-out and reachability, dedup, not_before, quiet hours,
competing claims (categories that arbitrate wait for the user's send window), caps.

``decide_arrival`` decides a claim as it arrives; ``decide_release`` decides the
claims of one user whose time has come (deferred, scheduled, or waiting for a send
window, where they compete). Both return the mutations to apply to the user's state
and a trace that explains every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from gateway.core.caps import Blocked, pick_channel, rules_for
from gateway.core.claims import Claim
from gateway.core.killswitch import blocking_switch
from gateway.core.route import Skip, route
from gateway.core.state import Hold, MarkDedup, Mutation, Reserve, SentEntry, Unhold, UserState
from gateway.core.times import open_windows, period_around, release_time, spread, zone
from gateway.domain import Category, Channel, Outcome, Reason
from gateway.policy.model import Policy
from gateway.profiles import UserProfile, compute_tier, opted_out
from gateway.store.records import KillSwitch


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: Reason | None
    detail: str
    plan: tuple[Channel, ...] = ()
    scheduled_at: datetime | None = None
    trace: tuple[str, ...] = ()
    mutations: tuple[Mutation, ...] = ()


@dataclass(frozen=True)
class Context:
    """Everything a decision reads."""

    policy: Policy
    profile: UserProfile | None
    state: UserState
    switches: Sequence[KillSwitch]
    now: datetime
    # Channels whose provider's breaker is open (in this process): tried last.
    down: frozenset[Channel] = frozenset()

    @property
    def tz(self) -> ZoneInfo:
        name = self.profile.timezone if self.profile and self.profile.timezone else self.policy.defaults.timezone
        return zone(name)

    @property
    def tier(self) -> str:
        if self.profile is None:
            return self.policy.tiers.default
        return compute_tier(self.profile.rfm, self.policy.tiers, self.now)


@dataclass(frozen=True)
class HeldClaim:
    message_id: str
    claim: Claim
    created_at: datetime


@dataclass
class _Trace:
    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(line)

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
        self.add(f"=> {outcome}{'/' + reason if reason else ''}: {detail}")
        return Decision(outcome, reason, detail, plan, at, tuple(self.lines), tuple(mutations))


def _local(moment: datetime, tz: ZoneInfo) -> str:
    return f"{moment.astimezone(tz):%Y-%m-%d %H:%M} {tz.key}"


def score(claim: Claim, policy: Policy, tier: str) -> tuple[float, str]:
    """A competing claim's score, and how it was made."""
    weight = policy.business_units[claim.bu].weight
    targets = policy.scenarios[claim.scenario].target_tiers
    fit = 1.0 if not targets or tier in targets else 0.5
    value = weight * (0.5 + claim.priority / 100) * fit
    how = f"weight {weight} x (0.5 + priority {claim.priority}/100) x fit {fit:g}"
    how += f" (tier {tier} {'in' if fit == 1.0 else 'not in'} targets)" if targets else " (no target tiers)"
    return value, how


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
    trace.add("kill switch: none matches")
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
    trace.add(f"route: {' then '.join(plan.plan)}" + (f" (skipped {plan.explain()})" if plan.skipped else ""))
    return plan.plan


def _quiet_period(claim: Claim, ctx: Context) -> tuple[time, time] | None:
    quiet = ctx.policy.categories[claim.category].quiet_hours
    if quiet.mode == "exempt" or quiet.start is None or quiet.end is None:
        return None
    return quiet.start, quiet.end


def _limit(claim: Claim, created_at: datetime, policy: Policy) -> datetime:
    """The latest a claim may still be sent: its deadline, else the policy's max hold."""
    return claim.deadline or created_at + policy.defaults.max_hold


def _quiet(
    claim: Claim, ctx: Context, trace: _Trace, plan: tuple[Channel, ...], created_at: datetime, message_id: str
) -> Decision | None:
    """Quiet hours in the user's time zone: None when they do not apply now."""
    quiet = ctx.policy.categories[claim.category].quiet_hours
    period = _quiet_period(claim, ctx)
    if period is None:
        trace.add(f"quiet hours: {claim.category} is exempt")
        return None
    around = period_around(period[0], period[1], ctx.now, ctx.tz)
    if around is None:
        trace.add(f"quiet hours {period[0]:%H:%M}-{period[1]:%H:%M}: not now ({_local(ctx.now, ctx.tz)})")
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
    if at > _limit(claim, created_at, ctx.policy):
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


def _cap_verdict(
    claim: Claim, ctx: Context, plan: tuple[Channel, ...], entries: Sequence[SentEntry], trace: _Trace
) -> tuple[Channel | None, list[Blocked]]:
    rules = rules_for(ctx.policy, claim.category, claim.bu, ctx.tier)
    channel, blocked = pick_channel(rules, plan, entries, ctx.now, ctx.tz)
    for rule in rules:
        if rule.channel is None or rule.channel == (channel or plan[0]):
            trace.add(f"cap {rule.label} ({rule.window}): {rule.used(entries, ctx.now, ctx.tz)} of {rule.limit} used")
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


def _capped(claim: Claim, trace: _Trace, blocked: Sequence[Blocked], extra: Sequence[Mutation] = ()) -> Decision:
    reason = Reason.SAFETY_CAP if claim.category is Category.BASIC else Reason.FREQUENCY_CAP
    return trace.done(Outcome.SUPPRESSED, reason, "; ".join(b.describe() for b in blocked), mutations=extra)


def decide_arrival(claim: Claim, message_id: str, ctx: Context) -> Decision:
    trace = _Trace()
    gate = _gate(claim, ctx, trace)
    if isinstance(gate, Decision):
        return gate
    plan = gate
    marks: list[Mutation] = []
    if claim.dedup_key:
        window = ctx.policy.categories[claim.category].dedup_window
        if ctx.state.dedup_seen:
            return trace.done(
                Outcome.SUPPRESSED,
                Reason.DUPLICATE,
                f"dedup_key '{claim.dedup_key[:64]}' of {claim.bu} was seen within {window}",
            )
        trace.add(f"dedup: '{claim.dedup_key[:64]}' not seen within {window}")
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
            return replace(quiet, mutations=(*marks, *quiet.mutations))
        return replace(quiet, mutations=())
    if ctx.policy.arbitrates(claim.category):
        at = _window_release(claim, ctx, ctx.now)
        if at is None or at > _limit(claim, ctx.now, ctx.policy):
            return trace.done(Outcome.SUPPRESSED, Reason.EXPIRED, "no send window opens before the deadline")
        return trace.done(
            Outcome.SCHEDULED,
            None,
            f"waits for the user's send window; released {_local(at, ctx.tz)}",
            plan=plan,
            at=at,
            mutations=[*marks, Hold(message_id, at)],
        )
    channel, blocked = _cap_verdict(claim, ctx, plan, ctx.state.sent, trace)
    if channel is None:
        return _capped(claim, trace, blocked)
    return _accept(claim, ctx, trace, plan, channel, message_id, marks)


def _in_window(claim: Claim, ctx: Context) -> bool:
    windows = open_windows(ctx.policy.defaults.send_windows, _quiet_period(claim, ctx), ctx.now, ctx.tz)
    return any(start <= ctx.now < end for start, end in windows)


def _current_window_end(claim: Claim, ctx: Context) -> datetime:
    windows = open_windows(ctx.policy.defaults.send_windows, _quiet_period(claim, ctx), ctx.now, ctx.tz)
    return next((end for start, end in windows if start <= ctx.now < end), ctx.now)


KILL_RECHECK = timedelta(minutes=1)


def decide_release(held: Sequence[HeldClaim], ctx: Context) -> list[tuple[str, Decision]]:
    """Decide the claims of one user that are due now. Claims of categories that
    arbitrate compete: the best scores win as far as the caps allow; the others are
    carried to the next window while their deadline allows."""
    out: list[tuple[str, Decision]] = []
    ready: list[tuple[HeldClaim, tuple[Channel, ...], _Trace]] = []
    for item in sorted(held, key=lambda h: (h.created_at, h.message_id)):
        claim, trace = item.claim, _Trace()
        trace.add(f"released at {_local(ctx.now, ctx.tz)}")
        gate = _gate(claim, ctx, trace)
        if isinstance(gate, Decision) and gate.reason is Reason.KILL_SWITCH:
            # A switch keeps what it stops: held and looked at again, sent if the
            # switch is cleared in time, else it ends with KILL_SWITCH.
            again = ctx.now + KILL_RECHECK
            if again <= _limit(claim, item.created_at, ctx.policy):
                detail = f"{gate.detail}; kept, looked at again {_local(again, ctx.tz)}"
                held_again = trace.done(
                    Outcome.SCHEDULED, None, detail, at=again, mutations=[Hold(item.message_id, again)]
                )
                out.append((item.message_id, held_again))
                continue
        if isinstance(gate, Decision):
            out.append((item.message_id, replace(gate, mutations=(Unhold(item.message_id),))))
            continue
        quiet = _quiet(claim, ctx, trace, gate, item.created_at, item.message_id)
        if quiet is not None:
            out.append((item.message_id, quiet))
            continue
        if ctx.policy.arbitrates(claim.category) and not _in_window(claim, ctx):
            at = _window_release(claim, ctx, ctx.now)
            if at is None or at > _limit(claim, item.created_at, ctx.policy):
                out.append(
                    (
                        item.message_id,
                        trace.done(
                            Outcome.SUPPRESSED,
                            Reason.EXPIRED,
                            "no send window opens before the deadline",
                            mutations=[Unhold(item.message_id)],
                        ),
                    )
                )
            else:
                out.append(
                    (
                        item.message_id,
                        trace.done(
                            Outcome.SCHEDULED,
                            None,
                            f"waits for the send window; released {_local(at, ctx.tz)}",
                            plan=gate,
                            at=at,
                            mutations=[Hold(item.message_id, at)],
                        ),
                    )
                )
            continue
        ready.append((item, gate, trace))

    tier = ctx.tier
    scored = []
    for item, plan, trace in ready:
        competes = ctx.policy.arbitrates(item.claim.category)
        value, how = score(item.claim, ctx.policy, tier) if competes else (float("inf"), "")
        if competes:
            trace.add(f"score {value:g} = {how}")
        scored.append((item, plan, trace, competes, value))
    # Claims that do not compete go first, in arrival order; then the best scores.
    scored.sort(key=lambda s: (s[3], -s[4], -s[0].claim.priority, s[0].created_at, s[0].message_id))

    entries = list(ctx.state.sent)
    winners: list[tuple[HeldClaim, float, Channel]] = []
    for item, plan, trace, competes, value in scored:
        claim = item.claim
        channel, blocked = _cap_verdict(claim, ctx, plan, entries, trace)
        if channel is not None:
            decision = _accept(claim, ctx, trace, plan, channel, item.message_id, [Unhold(item.message_id)])
            entries.append(SentEntry(item.message_id, ctx.now, claim.category, channel, claim.bu))
            winners.append((item, value, channel))
            out.append((item.message_id, decision))
            continue
        if not competes:
            out.append((item.message_id, _capped(claim, trace, blocked, [Unhold(item.message_id)])))
            continue
        blocking = {b.rule for b in blocked}
        rivals = [w for w in winners if any(r.counts(_entry_of(w, ctx)) for r in blocking)]
        rival_text = ""
        if rivals:
            best = max(rivals, key=lambda w: w[1])
            rival_text = f"lost to {best[0].claim.scenario} of {best[0].claim.bu} (score {best[1]:g} > {value:g}); "
            trace.add(f"competitor {best[0].message_id} ({best[0].claim.scenario}) won with score {best[1]:g}")
        next_at = _window_release(claim, ctx, _current_window_end(claim, ctx))
        if next_at is not None and next_at <= _limit(claim, item.created_at, ctx.policy):
            out.append(
                (
                    item.message_id,
                    trace.done(
                        Outcome.SCHEDULED,
                        None,
                        f"{rival_text}{'; '.join(b.describe() for b in blocked)}; carried to {_local(next_at, ctx.tz)}",
                        plan=plan,
                        at=next_at,
                        mutations=[Hold(item.message_id, next_at)],
                    ),
                )
            )
            continue
        reason = Reason.LOST_ARBITRATION if rivals else Reason.FREQUENCY_CAP
        out.append(
            (
                item.message_id,
                trace.done(
                    Outcome.SUPPRESSED,
                    reason,
                    f"{rival_text}{'; '.join(b.describe() for b in blocked)}; no window left",
                    mutations=[Unhold(item.message_id)],
                ),
            )
        )
    return out


def _entry_of(winner: tuple[HeldClaim, float, Channel], ctx: Context) -> SentEntry:
    item, _, channel = winner
    return SentEntry(item.message_id, ctx.now, item.claim.category, channel, item.claim.bu)
