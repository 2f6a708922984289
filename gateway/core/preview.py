"""How big an audience is, and a few of its users, without starting anything: read a
bounded number of users from the index (the audience's tags first, as a run would),
and scale the share that matches to the index's size."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from gateway.core.audience_nodes import has_contact
from gateway.core.campaigns import audience_of
from gateway.core.profile_rules import compute_tier
from gateway.policy.model import Policy
from gateway.store.base import Store, UserRead
from gateway.values.domain import Channel
from gateway.values.profiles import UserProfile

READ_AT_MOST = 5_000
CHUNK = 500


@dataclass(frozen=True)
class SampleUser:
    user_id: str
    tier: str
    tags: tuple[str, ...]
    channels: tuple[str, ...]


@dataclass
class Preview:
    canonical: str
    read: int = 0
    matched: int = 0
    estimate: int = 0
    exact: bool = False
    users: list[SampleUser] = field(default_factory=list)


def contact_channels(profile: UserProfile) -> tuple[str, ...]:
    """The channels the profile has a contact point for (opt-outs aside)."""
    return tuple(sorted(c.value for c in Channel if has_contact(profile, c)))


async def preview(store: Store, policy: Policy, text: str, sample: int, now: datetime) -> Preview:
    audience = audience_of(text, policy)
    labels = audience.scan_steps()
    out = Preview(audience.text)
    seen: set[str] = set()
    complete = True
    for label in labels:
        for shard in range(store.shards):
            cursor = "0"
            while True:
                if out.read >= READ_AT_MOST:
                    complete = False
                    break
                cursor, users = await store.scan_users(shard, cursor, CHUNK, label)
                fresh = [u for u in dict.fromkeys(users) if u not in seen]
                seen.update(fresh)
                views = await store.read_users([UserRead(u) for u in fresh], policy.defaults.idempotency_window)
                for view in views:
                    profile = view.profile
                    out.read += 1
                    if profile is None or not audience.indexed(profile, label):
                        continue
                    tier = compute_tier(profile.rfm, policy.tiers, now)
                    if audience.matches(profile, tier, now):
                        out.matched += 1
                        if len(out.users) < sample:
                            out.users.append(SampleUser(profile.user_id, tier, profile.tags, contact_channels(profile)))
                if cursor == "0":
                    break
    out.exact = complete
    if complete:
        out.estimate = out.matched
    else:
        indexed = sum([await store.index_size(label) for label in labels])
        out.estimate = round(out.matched / max(out.read, 1) * indexed)
    return out
