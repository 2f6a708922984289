"""What to do next with a delivery, as plain code over values (pure; tested alone).

After each try on a channel, ``judge`` turns the provider's answer (or the breaker's
refusal) into a verdict about that channel, and ``next_move`` turns the verdict into
the next step of the walk along the plan:

- delivered: finish; the request refused as wrong: finish as failed (no channel does
  better with a wrong request);
- a passing fault with tries left and a short wait: the same channel again;
- the user cannot be reached there: the next channel of the plan;
- the provider is down for now (its breaker open, a probe in flight, its faults used
  up the tries, a throttle, its quota or credentials refused): ``basic`` takes the
  next channel and waits only when none is left; reminders and marketing wait for
  the provider (docs/guarantees.md: a channel that is down is a reason to wait, not
  to drop), unless the wait would outlast the deadline;
- a wait that fits before the deadline is a wait; one that does not ends the delivery
  as expired.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from channels.base import SendResult, SendStatus
from gateway.values.domain import Category

MAX_ATTEMPTS = 3  # per channel, within one walk
# A wait this short is spent holding the delivery; a longer one puts it back in the
# queue for later (the breaker's cool-down, a throttle window).
INLINE_WAIT = 10.0


class Verdict(StrEnum):
    DELIVERED = "delivered"
    WRONG = "wrong"  # the provider called the request itself wrong
    AGAIN = "again"  # a passing fault: the same channel again after ``wait``
    UNREACHABLE = "unreachable"  # the user cannot be reached on this channel
    DOWN = "down"  # the provider is unavailable for ``wait`` seconds


@dataclass(frozen=True)
class Judged:
    verdict: Verdict
    wait: float = 0.0


def judge(result: SendResult, attempt: int, backoff: float, deadline_left: float | None) -> Judged:
    """The verdict on a channel after ``attempt`` (1-based) tries ended in ``result``.
    ``backoff`` is the wait before another try (a Retry-After already its floor)."""
    if result.status is SendStatus.DELIVERED:
        return Judged(Verdict.DELIVERED)
    if result.status is SendStatus.FAILED:
        return Judged(Verdict.WRONG)
    if result.status is SendStatus.LATER:
        return Judged(Verdict.DOWN, result.retry_after or backoff)
    if result.status is SendStatus.FALLBACK:
        # A fault the provider names as its own (quota, credentials, balance) makes the
        # channel unavailable for everyone, not unreachable for this user.
        return Judged(Verdict.DOWN, backoff) if result.trip else Judged(Verdict.UNREACHABLE)
    fits = deadline_left is None or backoff < deadline_left
    if attempt < MAX_ATTEMPTS and backoff <= INLINE_WAIT and fits:
        return Judged(Verdict.AGAIN, backoff)
    return Judged(Verdict.DOWN, backoff)


class Act(StrEnum):
    FINISH_DELIVERED = "delivered"
    FINISH_FAILED = "failed"
    FINISH_EXPIRED = "expired"
    AGAIN = "again"  # the same channel after ``wait``
    NEXT = "next"  # the next channel of the plan
    WAIT = "wait"  # hold the delivery and walk the plan again after ``wait``


@dataclass(frozen=True)
class Move:
    act: Act
    wait: float = 0.0


def next_move(
    category: Category,
    judged: Judged,
    has_next: bool,
    down_waits: list[float],
    deadline_left: float | None,
) -> Move:
    """The next step of the walk. ``down_waits``: how long each provider found down
    earlier in this walk stays down."""
    verdict = judged.verdict
    if verdict is Verdict.DELIVERED:
        return Move(Act.FINISH_DELIVERED)
    if verdict is Verdict.WRONG:
        return Move(Act.FINISH_FAILED)
    if verdict is Verdict.AGAIN:
        return Move(Act.AGAIN, judged.wait)
    fits = deadline_left is None or judged.wait < deadline_left
    if verdict is Verdict.DOWN and category is not Category.BASIC and fits:
        return Move(Act.WAIT, judged.wait)  # reminders and marketing wait for their provider
    if has_next:
        return Move(Act.NEXT)
    return end_of_plan([*down_waits, *([judged.wait] if verdict is Verdict.DOWN else [])], deadline_left)


def end_of_plan(down_waits: list[float], deadline_left: float | None) -> Move:
    """Every channel tried: wait for the first provider that is only down, while the
    deadline allows; else the delivery ends."""
    if not down_waits:
        return Move(Act.FINISH_FAILED)
    wait = min(down_waits)
    if deadline_left is not None and wait >= deadline_left:
        return Move(Act.FINISH_EXPIRED)
    return Move(Act.WAIT, wait)
