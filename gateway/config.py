"""Gateway settings: flags override environment variables override defaults.

The defaults are the embedded mode: in-memory state, the sample policies and
credentials of this repository, deliveries to the sandbox outbox under ``var/``.

``Settings`` is a pydantic-settings model: each setting is typed, and a value from a
flag or a ``HERALD_*`` variable is parsed as pydantic parses it (booleans take
``on``/``off``, ``true``/``false``, ``yes``/``no``, ``1``/``0`` in any case; anything else
is an error naming the variable and the flag, not a silent ``false``). Tokens and keys
are ``SecretStr``: ``repr``, ``str``, logs and ``--help`` show ``**********``, and only
the code that uses one asks for its value. ``Settings(...)`` built directly takes only
what it is given; ``from_env`` reads the environment (or a mapping given to it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_serializer, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.masking import redacted_url
from gateway.values.domain import Category
from gateway.values.jobs import LANES

SAMPLE_CREDENTIALS = Path("config/credentials.sample.yaml")
ENV_PREFIX = "HERALD_"
# The mapping ``from_env`` is reading; None: ``Settings`` built directly reads no variable.
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("herald_environ", default=None)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="forbid",
        # An empty variable is an unset one (HERALD_SANDBOX= keeps the default).
        env_ignore_empty=True,
    )

    listen: str = Field("127.0.0.1:50051", description="gRPC listen address host:port")
    admin_listen: str = Field(
        "127.0.0.1:9464", description="admin HTTP address (/metrics, /healthz, /readyz); loopback by default"
    )
    redis_url: str = Field(
        "",
        description="Redis URL (redis://[:password@]host:port/db, rediss:// for TLS); empty: in-memory state",
    )
    redis_cluster: bool = Field(
        False, description="the Redis URL names one node of a Redis Cluster; the others are discovered"
    )
    redis_shards: int = Field(
        16,
        description="shards the Redis data is laid out in (1-1024; fixed when a store is first used; on a cluster "
        "4-8 per master)",
    )
    policy_dir: Path = Field(Path("policies"), description="folder of policy YAML files")
    credentials: Path = Field(SAMPLE_CREDENTIALS, description="credentials file of hashed business-unit API keys")
    data_dir: Path = Field(Path("var"), description="data folder (sandbox outbox)")
    delivery_workers: int = Field(128, description="deliveries in flight at once in this process")
    deliver: bool = Field(
        True, description="run delivery in this process (false: API only; run `herald worker` elsewhere)"
    )
    deliver_lanes: str = Field(
        "basic,reminder,marketing",
        description="the delivery lanes this process takes (Redis only): e.g. basic,reminder on the gateways and "
        "marketing on workers of their own, so a campaign's sends never share a process with order notices",
    )
    campaigns: bool = Field(True, description="scan running campaigns in this process (gateways and workers)")
    campaign_scans: int = Field(
        4,
        ge=1,
        le=64,
        description="campaign shard scans this process runs at once: more keeps the cores busy while scans wait "
        "on Redis (8 on a process that only runs campaigns), fewer keeps a gateway's Push from waiting on them",
    )
    campaign_chunk: int = Field(
        200,
        ge=10,
        le=1000,
        description="index entries a campaign scan reads and decides at a time: more saves round trips (400 on a "
        "process that only runs campaigns), fewer keeps the stretches a Push may wait behind short",
    )
    reclaim_seconds: float = Field(
        60.0, description="Redis: a delivery a worker has held this long without finishing is taken over by another"
    )
    public_url: str = Field(
        "", description="the address users reach the admin port's public paths at (one-click unsubscribe links)"
    )
    public_listen: str = Field(
        "",
        description="address for the routes the internet reaches (webhooks, unsubscribe); empty: on the admin listener",
    )
    unsubscribe_key: SecretStr = Field(
        SecretStr(""),
        description="key that signs unsubscribe links (32+ characters); empty: one kept in the shared store",
    )
    admin_token: SecretStr = Field(
        SecretStr(""),
        description="token the admin API (kill switches) requires; empty: `herald serve` makes one, kept in "
        "<data dir>/admin-token (mode 0600), which `herald kill` on this machine reads",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: Literal["json", "console"] = Field(
        "json", description="json (one event a line) or console (for people)"
    )
    grace_seconds: float = Field(
        10.0, description="on SIGTERM: how long calls in flight and queued deliveries may finish"
    )
    max_in_flight: int = Field(
        256,
        description="Push and PushBatch calls answered at once by this process; more are turned away at once with "
        "RESOURCE_EXHAUSTED and a retry hint",
    )
    sandbox: bool = Field(
        True,
        description="deliver to the local sandbox outbox for providers whose credentials are not set (the "
        "embedded default); false: such a provider is an error",
    )
    processes: int = Field(
        1, description="gateway processes sharing the listening ports, one per core (more than 1 needs Redis)"
    )
    redis_wait_replicas: int = Field(
        0,
        description="replicas a decision's commit waits for (Redis WAIT) before Herald answers; 0: none "
        "(asynchronous replication: a master's failover can lose its last writes)",
    )
    redis_wait_ms: int = Field(200, description="the most a commit waits for those replicas (ms)")
    # Set by `serve --processes N` for its children (not a flag, not read from the
    # environment): share the listening ports with the sibling processes.
    reuse_port: bool = Field(False, exclude=True)

    @field_validator("deliver_lanes")
    @classmethod
    def _known_lanes(cls, value: str) -> str:
        names = [part.strip().lower() for part in value.split(",") if part.strip()]
        known = [lane.value for lane in LANES]
        unknown = [name for name in names if name not in known]
        if unknown or not names:
            raise ValueError(
                f"lanes are a comma-separated list of {', '.join(known)}; not {', '.join(unknown) or 'none'}"
            )
        return ",".join(names)

    @model_validator(mode="after")
    def _lanes_need_redis(self) -> Settings:
        if len(self.deliver_lanes.split(",")) < len(LANES) and not self.redis_url:
            raise ValueError(
                "deliver_lanes: taking only some lanes needs Redis (HERALD_REDIS_URL): in memory, nobody else "
                "would deliver the others"
            )
        return self

    @property
    def lanes(self) -> tuple[Category, ...]:
        return tuple(Category(name) for name in self.deliver_lanes.split(","))

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_any_case(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _format_any_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @property
    def store_kind(self) -> str:
        return "redis" if self.redis_url else "memory"

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes``, validated as the originals were."""
        return Settings(**{**{name: getattr(self, name) for name in type(self).model_fields}, **changes})

    # The Redis URL may carry a password: repr and dumps show it without.
    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, (redacted_url(value) if name == "redis_url" and value else value)

    @field_serializer("redis_url")
    def _redis_url_shown(self, value: str) -> str:
        return redacted_url(value) if value else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Flags (given to the constructor) over the variables of from_env's mapping; no
        # .env file, no secrets folder.
        return init_settings, _Environment(settings_cls)


class _Environment(EnvSettingsSource):
    """The documented ``HERALD_*`` variables of the mapping ``from_env`` reads; none
    when ``Settings`` is built directly."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        environ = _ENVIRON.get()
        if environ is None:
            return {}
        known = {env_name for env_name, _ in ENV.values()}
        return {
            name.lower(): value
            for name, value in environ.items()
            if name in known and not (self.env_ignore_empty and value == "")
        }


SECRETS = frozenset(name for name, field in Settings.model_fields.items() if field.annotation is SecretStr)
# setting -> (environment variable, help), for every setting a flag or variable sets
ENV: dict[str, tuple[str, str]] = {
    name: (ENV_PREFIX + name.upper(), field.description or "")
    for name, field in Settings.model_fields.items()
    if not field.exclude
}


# What `herald worker` (delivery only, no API) has no use for: its --help leaves them out.
API_ONLY = frozenset({"listen", "credentials", "max_in_flight", "deliver"})


def shown_default(name: str) -> str:
    """A setting's default as ``--help`` shows it (a secret never is)."""
    default = Settings.model_fields[name].default
    if name in SECRETS:
        return "none"
    return str(default) if default not in ("", None) else "none"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


_BOOL_WORDS = "on/off, true/false, yes/no or 1/0"
_KINDS = {"int_parsing": "int", "int_from_float": "int", "float_parsing": "number"}


def _problem(error: Mapping[str, Any]) -> str:
    name = str(error["loc"][0]) if error["loc"] else ""
    if name not in ENV:
        return str(error["msg"])
    env_name = ENV[name][0]
    where = f"{env_name} ({_flag(name)})"
    if name in SECRETS:  # never echo a secret
        return f"{where}: {error['msg']}"
    value = error.get("input")
    if error["type"] == "bool_parsing":
        return f"{where}: {value!r} is not a boolean; use {_BOOL_WORDS}"
    if error["type"] in _KINDS:
        return f"{where}: {value!r} is not a valid {_KINDS[error['type']]}"
    return f"{where}: {value!r}: {error['msg']}"


def from_env(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Settings from ``overrides`` (flags; None: not given) over the ``HERALD_*``
    variables of ``environ`` (default: this process's) over the defaults. A value that
    does not parse raises ValueError naming the variable and the flag."""
    given: dict[str, Any] = {name: value for name, value in overrides.items() if value is not None}
    token = _ENVIRON.set(dict(os.environ) if environ is None else environ)
    try:
        return Settings(**given)
    except ValidationError as exc:
        raise ValueError("; ".join(_problem(error) for error in exc.errors())) from None
    finally:
        _ENVIRON.reset(token)
