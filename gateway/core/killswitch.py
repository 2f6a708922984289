"""Which kill switch, if any, stops a claim or a channel (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from gateway.values.domain import Channel
from gateway.values.records import KillSwitch, ScopeKind


def blocking_switch(
    switches: Sequence[KillSwitch],
    *,
    now: datetime,
    category: str,
    bu: str,
    scenario: str,
    campaign_id: str,
) -> KillSwitch | None:
    """The first active switch whose scope covers the whole claim (channel switches
    are applied per channel by the router)."""
    if not switches:
        return None
    wanted = {
        ScopeKind.CATEGORY: category,
        ScopeKind.BU: bu,
        ScopeKind.SCENARIO: scenario,
        ScopeKind.CAMPAIGN: campaign_id,
    }
    for switch in sorted(switches, key=lambda s: s.created_at):
        if not switch.active(now):
            continue
        if switch.scope is ScopeKind.GLOBAL:
            return switch
        if switch.scope in wanted and wanted[switch.scope] and switch.value == wanted[switch.scope]:
            return switch
    return None


def killed_channels(switches: Sequence[KillSwitch], now: datetime) -> dict[Channel, KillSwitch]:
    out: dict[Channel, KillSwitch] = {}
    if not switches:
        return out
    for switch in switches:
        if switch.scope is ScopeKind.CHANNEL and switch.active(now) and switch.value in Channel.__members__:
            out.setdefault(Channel(switch.value), switch)
    return out
