"""The push funnel: the counter each step of a campaign's message adds to, and the
report built from those counters.

Each counter is added in the same store step as what it counts (the decision's commit,
a release's commit, a click's first sight), so restarts, retries and replicas never
count twice. A field is ``<variant>|<step>``:

- ``d:accepted``, ``d:scheduled``, ``d:suppressed:<REASON>``: the first decision
  (one per targeted user; the holdout's is ``d:suppressed:HOLDOUT``);
- ``r:accepted``, ``r:suppressed:<REASON>``: a held claim released later;
- ``sent``, ``failed``, ``delivered``, ``clicked``, ``converted``, ``unsubscribed``,
  ``value`` (the conversions' value, minor units).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields

from gateway.values.campaigns import DECIDED, HOLDOUT, RELEASED, funnel_field, suppressed_step
from gateway.values.decisions import Decision
from gateway.values.domain import Outcome, Reason


def field_of(variant: str, when: str, decision: Decision) -> str:
    if decision.outcome is Outcome.ACCEPTED:
        return funnel_field(variant, f"{when}:accepted")
    if decision.outcome is Outcome.SCHEDULED:
        return funnel_field(variant, f"{when}:scheduled")
    return funnel_field(variant, suppressed_step(when, (decision.reason or Reason.EXPIRED).value))


@dataclass
class Row:
    """One line of the funnel: the campaign (variant ""), a variant, or the holdout."""

    variant: str
    targeted: int = 0
    suppressed: dict[str, int] = field(default_factory=dict)
    scheduled: int = 0
    accepted: int = 0
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    clicked: int = 0
    converted: int = 0
    unsubscribed: int = 0
    conversion_value: int = 0

    def add(self, other: Row) -> None:
        for name in COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for reason, count in other.suppressed.items():
            self.suppressed[reason] = self.suppressed.get(reason, 0) + count

    @property
    def reach_rate(self) -> float:
        return _rate(self.sent, self.targeted)

    @property
    def click_rate(self) -> float:
        return _rate(self.clicked, self.sent)

    @property
    def conversion_rate(self) -> float:
        return _rate(self.converted, self.clicked)

    @property
    def push_effect(self) -> float:
        """targeted × reach × click × conversion, over targeted: conversions a user."""
        return _rate(self.converted, self.targeted)


# The counters of a row (the others: its variant and suppressed by reason).
COUNTS = tuple(f.name for f in fields(Row) if f.type == "int")


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


_PLAIN = {"sent", "delivered", "failed", "clicked", "converted", "unsubscribed"}


def rows(counts: Mapping[str, int], variants: Iterable[str]) -> list[Row]:
    """The campaign's row (variant "", the holdout left out), each variant's, and the
    holdout's (when it has anyone), from the stored counters."""
    by_variant: dict[str, Row] = {name: Row(name) for name in variants}
    for name, count in counts.items():
        variant, _, step = name.partition("|")
        row = by_variant.setdefault(variant, Row(variant))
        when, _, what = step.partition(":")
        if when in (DECIDED, RELEASED):
            if when == DECIDED:
                row.targeted += count
            if what == "accepted":
                row.accepted += count
            elif what == "scheduled":
                row.scheduled += count
            elif what.startswith("suppressed:"):
                reason = what.removeprefix("suppressed:")
                if reason != Reason.HOLDOUT.value:
                    row.suppressed[reason] = row.suppressed.get(reason, 0) + count
        elif step in _PLAIN:
            setattr(row, step, getattr(row, step) + count)
        elif step == "undelivered":
            row.failed += count  # taken by the provider, then reported not delivered
        elif step == "value":
            row.conversion_value += count
    total = Row("")
    for name, row in by_variant.items():
        if name != HOLDOUT:
            total.add(row)
    holdout = by_variant.pop(HOLDOUT, None)
    out = [total, *by_variant.values()]
    if holdout is not None and holdout.targeted:
        out.append(holdout)
    return out


def lift(all_rows: list[Row]) -> tuple[float, float]:
    """The holdout's conversions a user, and the treated users' minus it."""
    treated = all_rows[0]
    holdout = next((r for r in all_rows if r.variant == HOLDOUT), None)
    if holdout is None:
        return 0.0, 0.0
    base = _rate(holdout.converted, holdout.targeted)
    return base, _rate(treated.converted, treated.targeted) - base
