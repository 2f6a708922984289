"""Every Prometheus metric Herald exports, in one place (prefix ``herald_``).

With ``herald serve --processes N`` each process writes its figures to files in
``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` on any of them shows the sum (counters,
histograms, calls in flight) or the highest value (the gauges every process reads
from the shared store, breakers) over the live processes (``exposition``).

Label values are bounded sets (business units, categories, channels, reasons from
policy and the enums); never a user id, phone or message id. Known label combinations
are created at start-up (``prime``) so that zeros export before the first event.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.values.domain import Category, Channel, Outcome, Reason, UserFact
from gateway.values.jobs import LANES

# No ``<counter>_created`` / ``<histogram>_created`` series: a timestamp per labelled
# series that no query or alert of Herald's reads, and over a third of /metrics. Read
# when samples are collected, so it holds for every registry of the process; the
# multiprocess collector (``exposition`` with several processes) makes none either.
disable_created_metrics()  # type: ignore[no-untyped-call]

# With PROMETHEUS_MULTIPROC_DIR set, prometheus_client asks os.getpid() at every
# increment and observation, to notice a fork: a system call each (~0.3 µs here, a
# dozen a delivered message). The same check against a pid kept up to date across forks.
_PID = [os.getpid()]


def _process_id() -> int:
    return _PID[0]


def _forked() -> None:
    _PID[0] = os.getpid()


os.register_at_fork(after_in_child=_forked)
if getattr(values.ValueClass, "_multiprocess", False):
    values.ValueClass = values.MultiProcessValue(process_identifier=_process_id)  # type: ignore[no-untyped-call]

WECHAT_RULE_ACTIONS = ("tagged", "opted_out", "opted_in", "replied", "bad_tag", "profile_full")


class Metrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.decisions = Counter(
            "herald_decisions_total",
            "Decisions made, by business unit, category, outcome and reason (none when not suppressed).",
            ["bu", "category", "outcome", "reason"],
            registry=registry,
        )
        self.decision_seconds = Histogram(
            "herald_decision_seconds",
            "Time from a request's arrival to its answer, by method (Push, PushBatch).",
            ["method"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=registry,
        )
        self.refused = Counter(
            "herald_requests_refused_total",
            "Requests answered with a gRPC error instead of a decision, by status code.",
            ["method", "code"],
            registry=registry,
        )
        self.sends = Counter(
            "herald_sends_total",
            "Send attempts by channel, provider and result (delivered, retry, fallback, failed).",
            ["channel", "provider", "result"],
            registry=registry,
        )
        self.policy_info = Gauge(
            "herald_policy_info",
            "The serving policy version (value 1).",
            ["version"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.policy_reloads = Counter(
            "herald_policy_reloads_total", "Policy reloads by result (ok, refused).", ["result"], registry=registry
        )
        self.store_round_trips = Counter(
            "herald_store_round_trips_total",
            "Round trips to the state store (Redis) by operation.",
            ["op"],
            registry=registry,
        )
        self.fail_open = Counter(
            "herald_fail_open_decisions_total",
            "Decisions made without the state store because the category's policy says fail open.",
            ["category"],
            registry=registry,
        )
        self.replication_short = Counter(
            "herald_replication_waits_short_total",
            "Commits whose WAIT for HERALD_REDIS_WAIT_REPLICAS replicas timed out first (the writes stand, "
            "but a failover of that master right then could lose them), counted per node waited on.",
            registry=registry,
        )
        self.store_errors = Counter(
            "herald_store_errors_total", "State store calls that failed, by operation.", ["op"], registry=registry
        )
        self.delivery_queue_depth = Gauge(
            "herald_delivery_queue_depth",
            "Deliveries queued or in flight, by lane (basic, reminder, marketing; the shared streams on Redis, "
            "this process's queue in memory).",
            ["lane"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.delivery_queue_age = Gauge(
            "herald_delivery_queue_oldest_seconds",
            "Age of the oldest delivery still in the queue, by lane.",
            ["lane"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.delivery_waits = Counter(
            "herald_delivery_waits_total",
            "Deliveries put back in the queue to wait for a provider (breaker open, throttle, outage), by lane.",
            ["lane"],
            registry=registry,
        )
        self.waiting = Gauge(
            "herald_deliveries_waiting",
            "Deliveries waiting for a provider to come back (all replicas).",
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.in_flight = Gauge(
            "herald_calls_in_flight",
            "Push and PushBatch calls being answered by this process.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.shed = Counter(
            "herald_requests_shed_total",
            "Push and PushBatch calls turned away at once because this process was at its limit of calls "
            "in flight (RESOURCE_EXHAUSTED with a retry hint), by method.",
            ["method"],
            registry=registry,
        )
        self.spooled = Gauge(
            "herald_spooled_decisions",
            "Fail-open decisions kept on this machine's disk until the state store is back.",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.queue_seconds = Histogram(
            "herald_delivery_queue_seconds",
            "Time from a decision to the start of its delivery.",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600),
            registry=registry,
        )
        self.send_seconds = Histogram(
            "herald_send_seconds",
            "Time a provider took to answer one send, by channel.",
            ["channel"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.provider_wait_seconds = Histogram(
            "herald_provider_slot_wait_seconds",
            "Time a send waited for one of its provider's concurrency slots.",
            ["provider"],
            buckets=(0.0001, 0.001, 0.01, 0.1, 0.5, 1, 5),
            registry=registry,
        )
        self.fallbacks = Counter(
            "herald_fallbacks_total",
            "Deliveries passed from one channel to the next.",
            ["from", "to"],
            registry=registry,
        )
        self.retries = Counter(
            "herald_retries_total",
            "Sends tried again on the same channel after a passing fault.",
            ["channel"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "herald_dead_letters_total",
            "Deliveries that no channel delivered, by the plan's first channel.",
            ["channel"],
            registry=registry,
        )
        self.breaker_skips = Counter(
            "herald_breaker_skips_total",
            "Sends skipped because the provider's breaker was open.",
            ["provider"],
            registry=registry,
        )
        self.breaker_state = Gauge(
            "herald_breaker_state",
            "Provider breaker: 0 closed, 1 half-open, 2 open.",
            ["provider"],
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.rate_limit_waits = Counter(
            "herald_rate_limit_waits_total",
            "Times a send waited for its provider's shared rate limit.",
            ["provider"],
            registry=registry,
        )
        self.user_facts = Counter(
            "herald_user_updates_total",
            "Profile updates from what a provider said (unfollowed, bad_phone, ...).",
            ["fact"],
            registry=registry,
        )
        self.unsubscribes = Counter(
            "herald_unsubscribes_total",
            "One-click unsubscribes recorded (RFC 8058 links in marketing mail), by category and channel.",
            ["category", "channel"],
            registry=registry,
        )
        self.parked = Gauge(
            "herald_deliveries_held_by_kill_switch",
            "Deliveries a kill switch stopped, kept to be sent if it is cleared in time (all replicas).",
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.auto_stops = Counter(
            "herald_auto_stops_total",
            "Kill switches Herald set by itself (auto-stop), by scope (campaign, scenario).",
            ["scope"],
            registry=registry,
        )
        self.webhooks = Counter(
            "herald_webhooks_total",
            "Provider callbacks received, by source and result (ok, duplicate, refused).",
            ["source", "result"],
            registry=registry,
        )
        self.wechat_rules = Counter(
            "herald_wechat_event_rules_total",
            "What wechat_events rules did: users tagged, opted out or back in, replies sent, "
            "tags skipped (not a tag once filled in, or the profile full).",
            ["action"],
            registry=registry,
        )
        self.receipts = Counter(
            "herald_receipts_total",
            "Delivery receipts and job reports from providers, by channel and result.",
            ["channel", "result"],
            registry=registry,
        )
        self.mass_batch_size = Histogram(
            "herald_wechat_mass_batch_size",
            "Users in one WeChat mass-send call.",
            buckets=(2, 10, 100, 1000, 5000, 10000),
            registry=registry,
        )
        self.scheduled = Gauge(
            "herald_scheduled_users",
            "Users with held claims (deferred, scheduled or waiting for a send window), all replicas.",
            multiprocess_mode="livemax",
            registry=registry,
        )
        self.campaign_users = Counter(
            "herald_campaign_users_total",
            "Users met by campaign runs: index entries scanned, and users targeted (in an audience). "
            "No campaign label: per-campaign figures are in GetCampaign.",
            ["step"],
            registry=registry,
        )
        self.state_conflicts = Counter(
            "herald_state_conflicts_total",
            "Decisions made again because another decision changed the same user first.",
            registry=registry,
        )
        self.kill_switches = Gauge(
            "herald_kill_switches_active",
            "Active kill switches by scope.",
            ["scope"],
            multiprocess_mode="livemax",
            registry=registry,
        )

        self._decisions: dict[tuple[str, Category, Outcome, Reason | None], Any] = {}
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def of(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once per combination (the hot paths
        count every decision and every send; prometheus-client takes a lock a lookup)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def decision(self, bu: str, category: Category, outcome: Outcome, reason: Reason | None) -> None:
        """Count one decision (the label child is looked up once per combination)."""
        key = (bu, category, outcome, reason)
        child = self._decisions.get(key)
        if child is None:
            child = self._decisions[key] = self.decisions.labels(
                bu, category.value, outcome.value, "" if reason is None else reason.value
            )
        child.inc()

    def prime(self, business_units: list[str], providers: list[str] | None = None) -> None:
        """Create the known label combinations so that zeros export before the first
        event (a rate() over a series that did not exist is no rate at all)."""
        providers = providers or ["sandbox"]
        for method in ("Push", "PushBatch"):
            self.decision_seconds.labels(method)
            self.shed.labels(method)
        for action in WECHAT_RULE_ACTIONS:
            self.wechat_rules.labels(action)
        for lane in LANES:
            self.delivery_queue_depth.labels(lane.value)
            self.delivery_queue_age.labels(lane.value)
            self.delivery_waits.labels(lane.value)
        for category in Category:
            for bu in business_units:
                self.decisions.labels(bu, str(category), str(Outcome.ACCEPTED), "")
                self.decisions.labels(bu, str(category), str(Outcome.SCHEDULED), "")
                for reason in Reason:
                    self.decisions.labels(bu, str(category), str(Outcome.SUPPRESSED), str(reason))
        for channel in Channel:
            for provider in providers:
                for result in ("delivered", "retry", "later", "fallback", "failed"):
                    self.sends.labels(str(channel), provider, result)
            self.send_seconds.labels(str(channel))
            self.retries.labels(str(channel))
            self.dead_letters.labels(str(channel))
            for to in Channel:
                if to is not channel:
                    self.fallbacks.labels(str(channel), str(to))
            for result in ("delivered", "failed"):
                self.receipts.labels(str(channel), result)
        for provider in providers:
            self.breaker_state.labels(provider).set(0)
            self.breaker_skips.labels(provider)
            self.rate_limit_waits.labels(provider)
            self.provider_wait_seconds.labels(provider)
        for fact in UserFact:
            self.user_facts.labels(str(fact))
        for scope in ("campaign", "scenario"):
            self.auto_stops.labels(scope)
        for source in ("wechat", "aliyun_sms"):
            for result in ("ok", "duplicate", "refused"):
                self.webhooks.labels(source, result)
        for result in ("ok", "refused"):
            self.policy_reloads.labels(result)


def fresh_metrics() -> Metrics:
    """Metrics on their own registry (tests, several gateways in one process)."""
    return Metrics(CollectorRegistry())


def exposition(registry: CollectorRegistry) -> bytes:
    """The text /metrics serves: this process's registry, or with several processes
    (``PROMETHEUS_MULTIPROC_DIR`` set) every live process's figures combined."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        combined = CollectorRegistry()
        MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
        return generate_latest(combined)
    return generate_latest(registry)
