"""The serving policy, and its hot reload.

A reload happens on SIGHUP and when a file under the policy folder changes (checked
every ``interval`` seconds). A set that fails validation is refused, logged and counted,
and the last good set keeps serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from gateway.errors import PolicyError
from gateway.logs import get_logger
from gateway.loops import every
from gateway.metrics import Metrics
from gateway.policy.loader import load_policy, policy_files
from gateway.policy.model import Policy

log = get_logger(__name__)


def _stamp(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """Cheap change detection: every file's name, size and mtime."""
    out = []
    for path in policy_files(directory):
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        out.append((str(path), stat.st_size, stat.st_mtime_ns))
    return tuple(out)


Check = Callable[[Policy], None]


class PolicyHolder:
    def __init__(self, directory: Path, metrics: Metrics) -> None:
        self.directory = directory
        self._metrics = metrics
        self._policy = load_policy(directory)  # refuse to start on a bad set
        self._stamp = _stamp(directory)
        self.last_error: str | None = None
        # Run on a new set before it serves (raising PolicyError refuses it), then told
        # once it serves: e.g. the provider adapters are built from it, and a set whose
        # providers cannot be built is refused like any invalid set.
        self._checks: list[Check] = []
        self._listeners: list[Check] = []
        self._published: set[str] = set()
        self._publish()

    def check_with(self, check: Check) -> None:
        self._checks.append(check)

    def on_change(self, listener: Check) -> None:
        self._listeners.append(listener)

    @property
    def current(self) -> Policy:
        return self._policy

    def _publish(self) -> None:
        # The version served is 1, any other this process served before is 0 (rather
        # than removed: with several processes a series cannot be removed, only set).
        for version in self._published:
            self._metrics.policy_info.labels(version).set(0)
        self._metrics.policy_info.labels(self._policy.version).set(1)
        self._published.add(self._policy.version)

    def reload(self) -> bool:
        """Load the folder again; True when a new set now serves."""
        self._stamp = _stamp(self.directory)
        try:
            policy = load_policy(self.directory)
            if policy.version != self._policy.version:
                for check in self._checks:
                    check(policy)
        except PolicyError as exc:
            self.last_error = str(exc)
            self._metrics.policy_reloads.labels("refused").inc()
            log.error(
                "policy_reload_refused",
                serving=self._policy.version,
                problems=[str(p) for p in exc.problems][:50],
            )
            return False
        self.last_error = None
        self._metrics.policy_reloads.labels("ok").inc()
        if policy.version == self._policy.version:
            return False
        old, self._policy = self._policy, policy
        self._publish()
        for listener in self._listeners:
            listener(policy)
        log.info("policy_reloaded", old=old.version, new=policy.version)
        return True

    def reload_if_changed(self) -> bool:
        return _stamp(self.directory) != self._stamp and self.reload()

    async def watch(self, stopping: asyncio.Event, interval: float = 1.0) -> None:
        async def step() -> None:
            self.reload_if_changed()

        await every(interval, step, stopping, "policy-watch")
