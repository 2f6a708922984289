"""Gateway settings: flags override environment variables override defaults.

The defaults are the embedded mode: in-memory state, the sample policies and
credentials of this repository, deliveries to the sandbox outbox under ``var/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

SAMPLE_CREDENTIALS = Path("config/credentials.sample.yaml")


@dataclass(frozen=True)
class Settings:
    listen: str = "127.0.0.1:50051"
    admin_listen: str = "127.0.0.1:9464"
    redis_url: str = ""
    redis_cluster: bool = False
    redis_shards: int = 16
    policy_dir: Path = Path("policies")
    credentials: Path = SAMPLE_CREDENTIALS
    data_dir: Path = Path("var")
    delivery_workers: int = 128
    deliver: bool = True
    reclaim_seconds: float = 60.0
    public_url: str = ""
    public_listen: str = ""
    unsubscribe_key: str = ""
    admin_token: str = ""
    log_level: str = "INFO"
    log_format: str = "json"
    grace_seconds: float = 10.0
    max_in_flight: int = 256
    sandbox: bool = True
    processes: int = 1
    redis_wait_replicas: int = 0
    redis_wait_ms: int = 200
    # Set by `serve --processes N` for its children (not a flag): share the listening
    # ports with the sibling processes.
    reuse_port: bool = False

    @property
    def store_kind(self) -> str:
        return "redis" if self.redis_url else "memory"


# setting -> (environment variable, help)
ENV: dict[str, tuple[str, str]] = {
    "listen": ("HERALD_LISTEN", "gRPC listen address host:port"),
    "admin_listen": ("HERALD_ADMIN_LISTEN", "admin HTTP address (/metrics, /healthz, /readyz); loopback by default"),
    "redis_url": (
        "HERALD_REDIS_URL",
        "Redis URL (redis://[:password@]host:port/db, rediss:// for TLS); empty: in-memory state",
    ),
    "redis_cluster": (
        "HERALD_REDIS_CLUSTER",
        "the Redis URL names one node of a Redis Cluster; the others are discovered",
    ),
    "redis_shards": (
        "HERALD_REDIS_SHARDS",
        "shards the Redis data is laid out in (1-1024; fixed when a store is first used; on a cluster 4-8 per master)",
    ),
    "policy_dir": ("HERALD_POLICY_DIR", "folder of policy YAML files"),
    "credentials": ("HERALD_CREDENTIALS", "credentials file of hashed business-unit API keys"),
    "data_dir": ("HERALD_DATA_DIR", "data folder (sandbox outbox)"),
    "delivery_workers": ("HERALD_DELIVERY_WORKERS", "deliveries in flight at once in this process"),
    "deliver": ("HERALD_DELIVER", "run delivery in this process (false: API only; run `herald worker` elsewhere)"),
    "reclaim_seconds": (
        "HERALD_RECLAIM_SECONDS",
        "Redis: a delivery a worker has held this long without finishing is taken over by another",
    ),
    "public_listen": (
        "HERALD_PUBLIC_LISTEN",
        "address for the routes the internet reaches (webhooks, unsubscribe); empty: on the admin listener",
    ),
    "unsubscribe_key": (
        "HERALD_UNSUBSCRIBE_KEY",
        "key that signs unsubscribe links (32+ characters); empty: one kept in the shared store",
    ),
    "admin_token": ("HERALD_ADMIN_TOKEN", "token the admin API (kill switches) requires; empty: the API is off"),
    "public_url": (
        "HERALD_PUBLIC_URL",
        "the address users reach the admin port's public paths at (one-click unsubscribe links)",
    ),
    "log_level": ("HERALD_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR"),
    "log_format": ("HERALD_LOG_FORMAT", "json (one event a line) or console (for people)"),
    "grace_seconds": ("HERALD_GRACE_SECONDS", "on SIGTERM: how long calls in flight and queued deliveries may finish"),
    "max_in_flight": (
        "HERALD_MAX_IN_FLIGHT",
        "Push and PushBatch calls answered at once by this process; more are turned away at once with "
        "RESOURCE_EXHAUSTED and a retry hint",
    ),
    "redis_wait_replicas": (
        "HERALD_REDIS_WAIT_REPLICAS",
        "replicas a decision's commit waits for (Redis WAIT) before Herald answers; 0: none (asynchronous "
        "replication: a master's failover can lose its last writes)",
    ),
    "redis_wait_ms": ("HERALD_REDIS_WAIT_MS", "the most a commit waits for those replicas (ms)"),
    "processes": (
        "HERALD_PROCESSES",
        "gateway processes sharing the listening ports, one per core (more than 1 needs Redis)",
    ),
    "sandbox": (
        "HERALD_SANDBOX",
        "deliver to the local sandbox outbox for providers whose credentials are not set (the embedded "
        "default); false: such a provider is an error",
    ),
}


def from_env(environ: dict[str, str] | None = None, **overrides: object) -> Settings:
    environ = dict(os.environ) if environ is None else environ
    values: dict[str, object] = {}
    for spec in fields(Settings):
        if spec.name not in ENV:
            continue
        env_name = ENV[spec.name][0]
        raw = overrides.get(spec.name)
        if raw is None and env_name in environ:
            raw = environ[env_name]
        if raw is None:
            continue
        default = getattr(Settings, spec.name)
        try:
            values[spec.name] = _convert(default, raw)
        except ValueError:
            kind = type(default).__name__
            raise ValueError(f"{env_name} (--{spec.name.replace('_', '-')}): {raw!r} is not a valid {kind}") from None
    return Settings(**values)  # type: ignore[arg-type]


def _convert(default: object, raw: object) -> object:
    if isinstance(default, Path):
        return Path(str(raw))
    if isinstance(default, bool):
        return str(raw).lower() in ("1", "true", "yes")
    if isinstance(default, int):
        return int(str(raw))
    if isinstance(default, float):
        return float(str(raw))
    return str(raw)
