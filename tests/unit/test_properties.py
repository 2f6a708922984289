"""Arbitration invariants over random traffic, users, time zones and policies.

A small event simulation drives the pure decision functions the way the gateway does
(arrivals, releases at due times, deliveries that fail now and then and give their
reservation back) and checks, with counting written independently here:
- no user ever has more messages than a cap allows in any of its windows;
- a claim suppressed by caps or competition was really blocked at that moment;
- basic is never suppressed by caps, quiet hours or competition;
- nothing deferred is released inside quiet hours;
- each loser of a window was blocked by winners that outscore it;
- the same state, policy and clock give the same decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.decide import Context, HeldClaim, decide_arrival, decide_release, score
from gateway.core.trace import render
from gateway.policy.loader import load_policy
from gateway.policy.model import Policy
from gateway.values.claims import Claim
from gateway.values.decisions import Decision
from gateway.values.domain import Category, Channel, Outcome, Platform, PushProvider, Reason
from gateway.values.profiles import DeviceToken, Rfm, UserProfile, WeChat
from gateway.values.state import Commit, Held, Hold, MarkDedup, Mutation, Release, Reserve, SentEntry, Unhold, UserState
from tests.conftest import POLICIES

BASE = load_policy(POLICIES)
START = datetime(2026, 11, 9, 0, 0, tzinfo=UTC)  # a Monday
ZONES = ["Asia/Shanghai", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Pacific/Auckland"]
SCENARIOS = [
    ("order.shipped", "order"),
    ("price.drop", "growth"),
    ("back.in.stock", "growth"),
    ("new.arrivals", "growth"),
    ("double11.presale", "marketing"),
    ("coupon.flash", "marketing"),
    ("coupon.flash", "order"),
]
PARAMS = {
    "order.shipped": {"order_id": "1", "carrier": "SF", "tracking_no": "2"},
    "price.drop": {"item_name": "x", "new_price": "1"},
    "back.in.stock": {"item_name": "x"},
    "new.arrivals": {"category_name": "x"},
    "double11.presale": {"deposit": "1", "discount": "2"},
    "coupon.flash": {"amount": "1", "expires": "x"},
}


def policy_with(reminder_daily: int, marketing_daily: int, marketing_weekly: int, safety: int) -> Policy:
    cats = dict(BASE.categories)
    basic = cats[Category.BASIC]
    cats[Category.BASIC] = basic.model_copy(update={"caps": (basic.caps[0].model_copy(update={"limit": safety}),)})
    rem = cats[Category.REMINDER]
    cats[Category.REMINDER] = rem.model_copy(
        update={"caps": (rem.caps[0].model_copy(update={"limit": reminder_daily, "per_tier": {}}), *rem.caps[1:])}
    )
    mkt = cats[Category.MARKETING]
    cats[Category.MARKETING] = mkt.model_copy(
        update={
            "caps": (
                mkt.caps[0].model_copy(update={"limit": marketing_daily}),
                mkt.caps[1].model_copy(update={"limit": marketing_weekly}),
                *mkt.caps[2:],
            )
        }
    )
    return replace(BASE, categories=cats)


@dataclass(frozen=True)
class Arrival:
    minute: int
    user: int
    scenario: int
    priority: int
    deadline_hours: int | None
    fails: bool


@dataclass
class Sim:
    policy: Policy
    profiles: list[UserProfile]
    states: list[UserState] = field(default_factory=list)
    claims: dict[str, tuple[HeldClaim, int]] = field(default_factory=dict)
    kept: list[list[SentEntry]] = field(default_factory=list)
    log: list[tuple[datetime, int, str, Decision]] = field(default_factory=list)
    rounds: list[tuple[datetime, int, list[tuple[str, Decision]], UserState]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.states = [UserState() for _ in self.profiles]
        self.kept = [[] for _ in self.profiles]

    def ctx(self, user: int, now: datetime) -> Context:
        return Context(self.policy, self.profiles[user], self.states[user], (), now)

    def apply(self, user: int, mutations: tuple[Mutation, ...] | list[Mutation], fails: set[str]) -> None:
        state = self.states[user]
        sent = {e.message_id: e for e in state.sent}
        held = {h.message_id: h for h in state.held}
        for m in mutations:
            if isinstance(m, Reserve):
                sent[m.entry.message_id] = m.entry
            elif isinstance(m, Release):
                sent.pop(m.message_id, None)
            elif isinstance(m, Commit):
                sent[m.message_id] = msgspec.structs.replace(sent[m.message_id], committed=True)
            elif isinstance(m, Hold):
                held[m.message_id] = Held(m.message_id, m.due, m.pooled)
            elif isinstance(m, Unhold):
                held.pop(m.message_id, None)
            elif isinstance(m, MarkDedup):
                pass
        # Delivery: a failed send gives its reservation back, a good one commits.
        for m in mutations:
            if isinstance(m, Reserve):
                if m.entry.message_id in fails:
                    sent.pop(m.entry.message_id)
                else:
                    self.kept[user].append(m.entry)
        self.states[user] = UserState(state.version + 1, tuple(sent.values()), tuple(held.values()))

    def release_until(self, until: datetime, fails: set[str]) -> None:
        while True:
            due = [(h.due, u) for u, s in enumerate(self.states) for h in s.held if h.due <= until]
            if not due:
                return
            now, user = min(due)
            ready = [self.claims[h.message_id][0] for h in self.states[user].held if h.due <= now]
            before = self.states[user]
            verdicts = decide_release(ready, self.ctx(user, now))
            self.rounds.append((now, user, verdicts, before))
            for message_id, decision in verdicts:
                self.log.append((now, user, message_id, decision))
            self.apply(user, [m for _, d in verdicts for m in d.mutations], fails)

    def run(self, arrivals: list[Arrival]) -> None:
        fails = {f"m{i}" for i, a in enumerate(arrivals) if a.fails}
        for index, arrival in sorted(enumerate(arrivals), key=lambda ia: (ia[1].minute, ia[0])):
            now = START + timedelta(minutes=arrival.minute)
            self.release_until(now, fails)
            scenario, bu = SCENARIOS[arrival.scenario]
            category = self.policy.scenarios[scenario].category
            claim = Claim(
                bu=bu,
                request_id=f"r{index}",
                user_id=f"u{arrival.user}",
                scenario=scenario,
                category=category,
                params=PARAMS[scenario],
                content=None,
                campaign_id="c" if category is Category.MARKETING else "",
                dedup_key="",
                not_before=None,
                deadline=None if arrival.deadline_hours is None else now + timedelta(hours=arrival.deadline_hours),
                priority=arrival.priority,
            )
            message_id = f"m{index}"
            self.claims[message_id] = (HeldClaim(message_id, claim, now), arrival.user)
            decision = decide_arrival(claim, message_id, self.ctx(arrival.user, now))
            assert decision == decide_arrival(claim, message_id, self.ctx(arrival.user, now))  # deterministic
            self.log.append((now, arrival.user, message_id, decision))
            self.apply(arrival.user, decision.mutations, fails)
        self.release_until(START + timedelta(days=6), fails)


# --- independent counting --------------------------------------------------------------


def window_start(window: object, now: datetime, tz: ZoneInfo) -> datetime:
    calendar, rolling = window.calendar, window.rolling  # type: ignore[attr-defined]
    if rolling is not None:
        return now - rolling
    local = now.astimezone(tz)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if calendar == "week":
        midnight = (local - timedelta(days=local.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    elif calendar == "month":
        midnight = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return midnight.replace(tzinfo=None).replace(tzinfo=tz).astimezone(UTC)


def limits(
    policy: Policy, category: Category, bu: str, tier: str
) -> list[tuple[object, int, Category | None, Channel | None, str | None]]:
    out: list[tuple[object, int, Category | None, Channel | None, str | None]] = []
    for cap in policy.categories[category].caps:
        if cap.bu is None or cap.bu == bu:
            out.append((cap.window, cap.limit_for(tier), category, cap.channel, cap.bu))
    for channel, settings_ in policy.channels.items():
        from gateway.policy.schema import CapWindow

        if settings_.per_user_daily_limit:
            out.append((CapWindow(calendar="day"), settings_.per_user_daily_limit, None, channel, None))
        if settings_.per_user_monthly_limit:
            out.append((CapWindow(calendar="month"), settings_.per_user_monthly_limit, None, channel, None))
    return out


def count(
    entries: list[SentEntry],
    rule: tuple[object, int, Category | None, Channel | None, str | None],
    now: datetime,
    tz: ZoneInfo,
) -> int:
    window, _, category, channel, bu = rule
    start = window_start(window, now, tz)
    return sum(
        1
        for e in entries
        if start <= e.at <= now
        and (category is None or e.category == category)
        and (channel is None or e.channel == channel)
        and (bu is None or e.bu == bu)
    )


def fits(entries: list[SentEntry], claim: Claim, plan: tuple[Channel, ...], ctx: Context) -> bool:
    rules = limits(ctx.policy, claim.category, claim.bu, ctx.tier)
    for channel in plan:
        if all(
            count(entries, rule, ctx.now, ctx.tz) + 1 <= rule[1]
            for rule in rules
            if rule[3] is None or rule[3] == channel
        ):
            return True
    return False


users_st = st.lists(
    st.tuples(st.sampled_from(ZONES), st.sampled_from(["loyal", "champion", "at_risk", "new"]), st.booleans()),
    min_size=1,
    max_size=3,
)
arrivals_st = st.lists(
    st.builds(
        Arrival,
        minute=st.integers(0, 3 * 24 * 60),
        user=st.integers(0, 2),
        scenario=st.integers(0, len(SCENARIOS) - 1),
        priority=st.integers(0, 100),
        deadline_hours=st.one_of(st.none(), st.integers(1, 40)),
        fails=st.booleans(),
    ),
    min_size=1,
    max_size=40,
)


def make_profile(index: int, zone: str, tier: str, wechat: bool) -> UserProfile:
    rfm = {
        "loyal": Rfm(START - timedelta(days=5), 4, 50_000),
        "champion": Rfm(START - timedelta(days=1), 9, 900_000),
        "at_risk": Rfm(START - timedelta(days=50), 3, 50_000),
        "new": Rfm(),
    }[tier]
    return UserProfile(
        user_id=f"u{index}",
        wechat=WeChat("oAbCdEfGhIjKlMnOpQrStUvWxYz1", following=True) if wechat else None,
        phone="+8613800138000",
        device_tokens=(DeviceToken("t", Platform.ANDROID, PushProvider.FCM),),
        timezone=zone,
        rfm=rfm,
    )


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    users=users_st,
    arrivals=arrivals_st,
    caps=st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(0, 4), st.integers(1, 5)),
)
def test_arbitration_invariants(
    users: list[tuple[str, str, bool]], arrivals: list[Arrival], caps: tuple[int, int, int, int]
) -> None:
    policy = policy_with(*caps)
    profiles = [make_profile(i, *u) for i, u in enumerate(users)]
    arrivals = [replace(a, user=a.user % len(profiles)) for a in arrivals]
    sim = Sim(policy, profiles)
    sim.run(arrivals)

    # 1. Caps hold in every window: checked at each acceptance, over what was kept.
    for now, user, message_id, decision in sim.log:
        if decision.outcome is not Outcome.ACCEPTED:
            continue
        claim = sim.claims[message_id][0].claim
        ctx = sim.ctx(user, now)
        entry = next((e for e in sim.kept[user] if e.message_id == message_id), None)
        if entry is None:
            continue  # failed delivery: gave its budget back
        for rule in limits(policy, claim.category, claim.bu, ctx.tier):
            if rule[3] is not None and rule[3] != entry.channel:
                continue
            assert count(sim.kept[user], rule, now, ctx.tz) <= rule[1], (message_id, rule)

    for _now, user, message_id, decision in sim.log:
        claim = sim.claims[message_id][0].claim
        # 2. Basic is never held back by caps (other than its safety cap), quiet hours or competition.
        if claim.category is Category.BASIC:
            assert decision.reason not in (Reason.FREQUENCY_CAP, Reason.QUIET_HOURS, Reason.LOST_ARBITRATION)
        # 3. Nothing deferred lands in quiet hours.
        if decision.outcome is Outcome.SCHEDULED and decision.scheduled_at is not None:
            quiet = policy.categories[claim.category].quiet_hours
            if quiet.mode != "exempt" and "quiet hours" in decision.detail:
                tz = ZoneInfo(sim.profiles[user].timezone)
                local = decision.scheduled_at.astimezone(tz).time()
                assert quiet.start is not None and quiet.end is not None
                in_quiet = (
                    (quiet.start <= local or local < quiet.end)
                    if quiet.start > quiet.end
                    else (quiet.start <= local < quiet.end)
                )
                assert not in_quiet, (decision.detail, local)
        if decision.outcome is Outcome.ACCEPTED and claim.category is not Category.BASIC:
            quiet = policy.categories[claim.category].quiet_hours
            if quiet.mode != "exempt":
                assert "quiet" not in render(decision.trace)[-1]

    # 4. Each loser of a window was really blocked, by entries that were there before the
    #    round or by winners that outscore it; never by a lower-scored winner.
    for now, user, verdicts, before in sim.rounds:
        ctx = Context(policy, sim.profiles[user], before, (), now)
        winners = [(sim.claims[m][0].claim, d) for m, d in verdicts if d.outcome is Outcome.ACCEPTED]
        for message_id, decision in verdicts:
            lost = decision.reason in (Reason.LOST_ARBITRATION, Reason.FREQUENCY_CAP) or (
                decision.outcome is Outcome.SCHEDULED and "used" in decision.detail
            )
            if not lost:
                continue
            claim = sim.claims[message_id][0].claim
            mine, _ = score(claim, policy, ctx.tier)
            stronger = [
                SentEntry(f"w{i}", now, c.category, d.plan[0], c.bu)
                for i, (c, d) in enumerate(winners)
                if not policy.arbitrates(c.category) or score(c, policy, ctx.tier)[0] >= mine
            ]
            plan = decision.plan or tuple(
                ch for ch in policy.scenarios[claim.scenario].channels if ch is not Channel.WECHAT_CS
            )
            assert not fits(list(before.sent) + stronger, claim, plan, ctx), (message_id, decision.detail)
