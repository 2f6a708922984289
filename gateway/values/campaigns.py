"""A campaign: one marketing message to an audience, in variants, run by Herald.

A campaign is stored whole (its definition and where it stands) and changed only
through a version check, so two operators pausing and resuming at once cannot lose a
step. Where each shard's scan stands is kept beside it (``ShardProgress``); the funnel
is counted where each step happens (see ``gateway.core.funnel``).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from enum import StrEnum

import msgspec

from gateway.values.claims import Content

HOLDOUT = "holdout"  # the name of the share that receives nothing (for lift)
REST = "~rest"  # after a campaign id: the scan after a test (never in an id)
SWEEP = "~cancel"  # after a campaign id: the sweep of its held claims once cancelled
# How long a campaign, its progress and its funnel are kept after their last change.
CAMPAIGN_RETENTION = timedelta(days=180)


class CampaignState(StrEnum):
    DRAFT = "DRAFT"  # created, not started: nothing is decided
    RUNNING = "RUNNING"  # users are being decided (from start_at on)
    PAUSED = "PAUSED"  # the scan stops where it is; held claims stay held
    COMPLETED = "COMPLETED"  # every targeted user was decided
    CANCELLED = "CANCELLED"  # stopped for good; held claims ended as CANCELLED


# Which state changes an operator may ask for, and from where.
MOVES: dict[str, tuple[frozenset[CampaignState], CampaignState]] = {
    "start": (frozenset({CampaignState.DRAFT}), CampaignState.RUNNING),
    "pause": (frozenset({CampaignState.RUNNING}), CampaignState.PAUSED),
    "resume": (frozenset({CampaignState.PAUSED}), CampaignState.RUNNING),
    "cancel": (
        frozenset({CampaignState.DRAFT, CampaignState.RUNNING, CampaignState.PAUSED, CampaignState.COMPLETED}),
        CampaignState.CANCELLED,
    ),
}


class Variant(msgspec.Struct, frozen=True, gc=False):
    name: str
    weight: int
    params: dict[str, str] = msgspec.field(default_factory=dict)
    content: Content | None = None


class TestPlan(msgspec.Struct, frozen=True, gc=False):
    """Test, then send the winner: the variants go to ``sample`` of the audience; once
    that part is decided and ``wait`` has passed, the variant with the best ``metric``
    goes to everyone else."""

    sample: float
    wait: timedelta
    metric: str = "click_rate"  # or "conversion_rate"


METRICS = ("click_rate", "conversion_rate")


class Campaign(msgspec.Struct, frozen=True, gc=False):
    campaign_id: str
    bu: str
    scenario: str
    audience: str  # the expression, canonical (see gateway.core.audience)
    variants: tuple[Variant, ...]
    created_at: datetime
    updated_at: datetime
    state: CampaignState = CampaignState.DRAFT
    description: str = ""
    holdout: float = 0.0  # the share of the audience that gets nothing
    start_at: datetime | None = None  # not before this (None: when started)
    deadline: datetime | None = None  # claims not sent by then expire
    priority: int = 50
    started_at: datetime | None = None
    finished_at: datetime | None = None
    version: int = 0
    test: TestPlan | None = None
    tested_at: datetime | None = None  # when the test's part of the audience was decided
    winner: str = ""  # the variant the rest of the audience gets
    # Why the runner paused it (the policy no longer lets its claims be made); cleared
    # on resume. Empty when an operator paused it.
    paused_because: str = ""
    # Cancelled, and the claims it still held were all ended (by the runner's sweep).
    swept: bool = False

    @property
    def phase(self) -> str:
        """ "test" (the sample), "waiting" (for the test's results), or "all"."""
        if self.test is None or self.winner:
            return "all"
        return "test" if self.tested_at is None else "waiting"

    def in_sample(self, user_id: str) -> bool:
        if self.test is None:
            return True
        digest = hashlib.blake2b(f"{self.campaign_id}\x00sample\x00{user_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64 < self.test.sample

    def share_for(self, user_id: str) -> str | None:
        """What this user gets now: the holdout, a variant by weight (the test's sample,
        or everyone without a test), the winner (the rest, once chosen), or None (the
        rest, while the test runs)."""
        share = self.share_of(user_id)
        if share == HOLDOUT or self.test is None or self.in_sample(user_id):
            return share
        return self.winner or None

    def decided_in_test(self, user_id: str) -> bool:
        return self.test is not None and (self.in_sample(user_id) or self.share_of(user_id) == HOLDOUT)

    @property
    def variant_names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variants)

    @property
    def active(self) -> bool:
        """Work for the runner: running, or cancelled after it started with the claims
        it still holds not yet ended."""
        return self.state is CampaignState.RUNNING or (
            self.state is CampaignState.CANCELLED and self.started_at is not None and not self.swept
        )

    @property
    def sweep_id(self) -> str:
        """The name the sweep of a cancelled campaign's held claims keeps its progress
        under."""
        return self.campaign_id + SWEEP

    @property
    def scan_id(self) -> str:
        """The name the current scan's progress is kept under: a test's second scan
        (the rest of the audience, with the winner) has its own."""
        return self.campaign_id + REST if self.test is not None and self.winner else self.campaign_id

    @property
    def scan_ids(self) -> tuple[str, ...]:
        return (self.campaign_id, self.campaign_id + REST) if self.test is not None else (self.campaign_id,)

    def share_of(self, user_id: str) -> str:
        """The variant (or ``HOLDOUT``) this user falls in: a hash of (campaign, user),
        so the split is stable per user across runs, restarts and replicas."""
        digest = hashlib.blake2b(f"{self.campaign_id}\x00{user_id}".encode(), digest_size=8).digest()
        point = int.from_bytes(digest, "big") / 2**64  # uniform in [0, 1)
        if point < self.holdout:
            return HOLDOUT
        point = (point - self.holdout) / (1.0 - self.holdout)
        total = sum(v.weight for v in self.variants)
        edge = 0.0
        for variant in self.variants:
            edge += variant.weight / total
            if point < edge:
                return variant.name
        return self.variants[-1].name

    def variant(self, name: str) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None)


class ShardProgress(msgspec.Struct, frozen=True, gc=False):
    """Where one shard's scan of a campaign stands."""

    shard: int
    cursor: str = "0"  # "<plan step>:<SSCAN cursor>"
    done: bool = False
    scanned: int = 0  # index entries read
    matched: int = 0  # users in the audience (holdout included)
    holdout: int = 0
    errors: int = 0  # users whose decision failed and were retried


# A funnel step's first part: when a claim was decided (its first decision, or a held
# claim's release); see gateway.core.funnel for the steps.
DECIDED = "d"
RELEASED = "r"


def suppressed_step(when: str, reason: str) -> str:
    """The step of a claim decided SUPPRESSED for ``reason``, first (``DECIDED``) or at
    its release (``RELEASED``)."""
    return f"{when}:suppressed:{reason}"


def funnel_field(variant: str, step: str) -> str:
    """A funnel counter's name: the variant ("holdout" for the holdout) and the step
    (see gateway.core.funnel)."""
    return f"{variant}|{step}"


def request_id_of(campaign_id: str, user_id: str) -> str:
    """The idempotency key of a campaign's claim on a user: a run killed at any instant
    decides the same user again under the same key, so the user gets one message."""
    return "cmp:" + campaign_id + ":" + hashlib.blake2b(user_id.encode(), digest_size=10).hexdigest()
