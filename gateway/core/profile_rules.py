"""The pure rules over user profiles: RFM tier, opt-outs and the WeChat
customer-service window.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.policy.schema import CsWindow, TierPolicy
from gateway.values.domain import Category, Channel, InteractionKind
from gateway.values.profiles import Interaction, OptOut, Rfm, UserProfile


def compute_tier(rfm: Rfm, tiers: TierPolicy, now: datetime) -> str:
    """The first tier rule that the user's RFM inputs satisfy, else the default."""
    recency = None if rfm.last_purchase_at is None else (now - rfm.last_purchase_at).days
    spend = rfm.spend_in_period_minor / 100
    for rule in tiers.rules:
        if rule.never_purchased is not None and rule.never_purchased != (recency is None):
            continue
        if rule.recency_days is not None and (recency is None or not rule.recency_days.holds(recency)):
            continue
        if rule.orders is not None and not rule.orders.holds(rfm.orders_in_period):
            continue
        if rule.spend is not None and not rule.spend.holds(spend):
            continue
        return rule.name
    return tiers.default


def opted_out(profile: UserProfile, category: Category, channel: Channel | None = None) -> OptOut | None:
    """The opt-out that forbids ``category`` (on ``channel``, when given), if any.

    With ``channel`` None, only category-wide opt-outs count. ``basic`` ignores
    category-wide opt-outs (it cannot be opted out of) but honours channel ones
    (a user who replied STOP to SMS gets no SMS at all).
    """
    for entry in profile.opt_outs:
        category_hit = entry.category is None or entry.category == category
        if not category_hit:
            continue
        if entry.channel is None:
            if category is Category.BASIC:
                continue
            return entry
        if channel is not None and entry.channel == channel:
            return entry
    return None


@dataclass(frozen=True)
class CsWindowState:
    open_until: datetime
    # None: no limit.
    quota: int | None
    opened_at: datetime | None = None


def cs_window(
    interactions: Iterable[Interaction], windows: Mapping[InteractionKind, CsWindow], now: datetime
) -> CsWindowState | None:
    """The customer-service window the user's interactions hold open at ``now``.

    Of the windows still open, the one that allows the most messages wins, then the one
    that lasts longest. Messages already sent in it are counted by the channel layer.
    """
    best: CsWindowState | None = None
    for interaction in interactions:
        policy = windows.get(interaction.kind)
        if policy is None:
            continue
        until = interaction.at + policy.window
        if until <= now:
            continue
        state = CsWindowState(open_until=until, quota=policy.messages, opened_at=interaction.at)
        if best is None or _window_rank(state) > _window_rank(best):
            best = state
    return best


def _window_rank(state: CsWindowState) -> tuple[float, datetime]:
    return (float("inf") if state.quota is None else state.quota, state.open_until)


def interaction_retention(windows: Mapping[InteractionKind, CsWindow]) -> timedelta:
    """How long interactions must be kept: the longest window, at least a day."""
    return max([timedelta(days=1), *(w.window for w in windows.values())])
