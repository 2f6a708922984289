"""Background loops (gateway/loops.py): a step that keeps failing (the store is down) is
logged once, then at most once per ``repeat_every`` with the count of what went
unlogged, and once more when it works again."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.errors import StoreUnavailable
from gateway.loops import REPEAT_EVERY, StepFailures, every


class Recorder:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append(("warning", event, fields))

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append(("info", event, fields))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_an_outage_is_one_line_then_one_per_period_with_the_count_left_out() -> None:
    clock, log = Clock(), Recorder()
    failures = StepFailures("gauges", repeat_every=30.0, clock=clock, logger=log)
    # four rounds a second for 65 s: 260 failures
    for tick in range(260):
        clock.now = tick / 4
        failures.failed("Redis is unreachable")
    assert log.lines == [
        ("warning", "loop_step_failed", {"loop": "gauges", "error": "Redis is unreachable"}),
        (
            "warning",
            "loop_step_failed",
            {"loop": "gauges", "error": "Redis is unreachable", "unlogged": 119, "failing_seconds": 30.0},
        ),
        (
            "warning",
            "loop_step_failed",
            {"loop": "gauges", "error": "Redis is unreachable", "unlogged": 119, "failing_seconds": 60.0},
        ),
    ]
    clock.now = 70.0
    failures.succeeded()
    assert log.lines[-1] == (
        "info",
        "loop_step_recovered",
        {"loop": "gauges", "failures": 260, "failing_seconds": 70.0},
    )
    failures.succeeded()  # working steps say nothing
    assert len(log.lines) == 4
    clock.now = 80.0
    failures.failed("again")  # a new outage is logged at once
    assert log.lines[-1] == ("warning", "loop_step_failed", {"loop": "gauges", "error": "again"})


def test_the_default_period_is_thirty_seconds() -> None:
    assert REPEAT_EVERY == 30.0


async def test_every_logs_a_failing_step_at_a_bounded_rate() -> None:
    clock, log = Clock(), Recorder()
    stopping = asyncio.Event()
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        if calls == 200:
            stopping.set()
        if calls <= 150:  # the store is down for 150 rounds, then back
            raise StoreUnavailable("Redis is unreachable")

    failures = StepFailures("scheduler", clock=clock, logger=log)
    await asyncio.wait_for(every(0.0, step, stopping, "scheduler", failures), 10)
    assert calls == 200
    assert [(level, event) for level, event, _ in log.lines] == [
        ("warning", "loop_step_failed"),
        ("info", "loop_step_recovered"),
    ]
    assert log.lines[1][2]["failures"] == 150


async def test_every_with_a_real_clock_logs_once_in_a_short_outage() -> None:
    log = Recorder()
    stopping = asyncio.Event()

    async def step() -> None:
        raise StoreUnavailable("Redis is unreachable")

    task = asyncio.create_task(every(0.001, step, stopping, "kill-switches", StepFailures("kill-switches", logger=log)))
    await asyncio.sleep(0.2)  # ~100 rounds
    stopping.set()
    await asyncio.wait_for(task, 5)
    assert [event for _, event, _ in log.lines] == ["loop_step_failed"]


def test_without_a_period_the_default_one_applies() -> None:
    clock, log = Clock(), Recorder()
    failures = StepFailures("gauges", clock=clock, logger=log)
    failures.failed("down")
    clock.now = REPEAT_EVERY - 0.1
    failures.failed("down")
    assert len(log.lines) == 1  # within the period: not logged
    clock.now = REPEAT_EVERY
    failures.failed("down")
    assert len(log.lines) == 2 and log.lines[-1][2]["unlogged"] == 1
