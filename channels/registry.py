"""Which adapter serves which channel: the provider policy names for the channel, when
its credentials are in the environment; the sandbox otherwise (said once at start)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from channels.aliyun_sms import AliyunSmsAdapter
from channels.base import ChannelAdapter, Delivery
from channels.email import SmtpAdapter
from channels.fcm import FcmAdapter, ServiceAccount, ServiceAccountError
from channels.http import Http
from channels.jpush import JpushAdapter
from channels.sandbox import SandboxAdapter
from channels.wechat import WechatAdapter
from channels.wechat_token import WechatToken
from gateway.clock import Clock
from gateway.policy.model import Policy
from gateway.policy.providers import (
    AliyunSmsProvider,
    FcmProvider,
    JpushProvider,
    SandboxProvider,
    SmtpProvider,
    WechatProvider,
)
from gateway.store.base import Store
from gateway.values.domain import Channel, PushProvider

# App-push devices name their service; the provider of that type serves them.
DEVICE_PROVIDER_TYPE = {PushProvider.FCM: "fcm", PushProvider.JPUSH: "jpush"}


class MissingCredentials(Exception):
    pass


def _env(environ: Mapping[str, str], name: str | None, provider: str) -> str:
    if name is None:
        return ""
    value = environ.get(name, "")
    if not value:
        raise MissingCredentials(f"provider '{provider}': environment variable {name} is not set")
    return value


def _identity(config: object, environ: Mapping[str, str]) -> tuple[object, ...]:
    """What makes an adapter: its settings and the values of the variables they name.
    An adapter whose identity did not change across a reload is kept (its connections,
    its cached token, the mass sends it is collecting)."""
    names = sorted(str(value) for key, value in vars(config).items() if key.endswith("_env") and isinstance(value, str))
    return (config, tuple((name, environ.get(name, "")) for name in names))


@dataclass
class Providers:
    sandbox: SandboxAdapter
    adapters: dict[str, ChannelAdapter] = field(default_factory=dict)
    # provider name -> why it is served by the sandbox
    sandboxed: dict[str, str] = field(default_factory=dict)
    identities: dict[str, tuple[object, ...]] = field(default_factory=dict)

    def for_channel(self, channel: Channel, policy: Policy, device: PushProvider | None = None) -> ChannelAdapter:
        if channel is Channel.APP_PUSH and device is not None:
            wanted = DEVICE_PROVIDER_TYPE.get(device)
            for name, config in policy.providers.items():
                if config.type == wanted and name in self.adapters:
                    return self.adapters[name]
        settings = policy.channels.get(channel)
        if settings is None:
            return self.sandbox
        return self.adapters.get(settings.provider, self.sandbox)

    async def close(self, keep: Providers | None = None) -> None:
        """Close the adapters (but those ``keep`` still uses, and the shared sandbox
        when ``keep`` is given)."""
        kept = set(map(id, keep.adapters.values())) if keep is not None else set()
        for adapter in self.adapters.values():
            if id(adapter) not in kept:
                await adapter.close()
        if keep is None:
            await self.sandbox.close()


def build_providers(
    policy: Policy,
    environ: Mapping[str, str],
    store: Store,
    clock: Clock,
    sandbox: SandboxAdapter,
    on_mass_batch: Callable[[int], None] = lambda size: None,
    unsubscribe_url: Callable[[Delivery], str | None] = lambda delivery: None,
    *,
    sandbox_allowed: bool = True,
    previous: Providers | None = None,
) -> Providers:
    """The adapters of every provider the policy uses. A provider whose credentials are
    missing is served by the sandbox when ``sandbox_allowed`` (the embedded default);
    otherwise that is an error naming it. Adapters of ``previous`` whose settings did
    not change are reused."""
    providers = Providers(sandbox)
    problems: list[str] = []
    used = {settings.provider for settings in policy.channels.values()}
    used |= {name for name, config in policy.providers.items() if config.type in DEVICE_PROVIDER_TYPE.values()}
    for name in sorted(used):
        config = policy.providers.get(name)
        if config is None or isinstance(config, SandboxProvider):
            continue
        identity = _identity(config, environ)
        if previous is not None and previous.identities.get(name) == identity and name in previous.adapters:
            providers.adapters[name] = previous.adapters[name]
            providers.identities[name] = identity
            continue
        try:
            adapter = _build(name, config, environ, store, clock, on_mass_batch, unsubscribe_url)
        except MissingCredentials as exc:
            if not sandbox_allowed:
                problems.append(f"{exc}; set it, or name a provider of type sandbox for the channel")
            providers.sandboxed[name] = str(exc)
            continue
        if adapter is None:
            providers.sandboxed[name] = f"provider '{name}' ({config.type}) has no adapter in this version"
            continue
        providers.adapters[name] = adapter
        providers.identities[name] = identity
    if problems:
        raise ProviderError(problems)
    return providers


class ProviderError(Exception):
    """Providers the policy names cannot be built (and the sandbox is off)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _build(
    name: str,
    config: object,
    environ: Mapping[str, str],
    store: Store,
    clock: Clock,
    on_mass_batch: Callable[[int], None],
    unsubscribe_url: Callable[[Delivery], str | None],
) -> ChannelAdapter | None:
    if isinstance(config, WechatProvider):
        http = Http()
        appid = _env(environ, config.appid_env, name)
        token = WechatToken(http, config.base_url, appid, _env(environ, config.secret_env, name), store, clock)
        return WechatAdapter(
            name, config.base_url, token, http, clock.now, mass_wait=config.mass_batch_wait, on_batch=on_mass_batch
        )
    if isinstance(config, AliyunSmsProvider):
        return AliyunSmsAdapter(
            name,
            config.base_url,
            _env(environ, config.access_key_id_env, name),
            _env(environ, config.access_key_secret_env, name),
            config.sign_name,
            Http(),
            clock.now,
        )
    if isinstance(config, SmtpProvider):
        return SmtpAdapter(
            name,
            config.host,
            config.port,
            config.tls,
            config.sender,
            _env(environ, config.username_env, name),
            _env(environ, config.password_env, name),
            unsubscribe_url,
        )
    if isinstance(config, FcmProvider):
        path = _env(environ, config.service_account_file_env, name)
        try:
            with open(path, "rb") as key_file:
                account = ServiceAccount.parse(key_file.read())
        except OSError as exc:
            raise MissingCredentials(
                f"provider '{name}': cannot read the service-account key file ({exc.strerror})"
            ) from exc
        except ServiceAccountError as exc:
            raise MissingCredentials(f"provider '{name}': {exc}") from exc
        return FcmAdapter(name, config.base_url, config.project_id, account, Http())
    if isinstance(config, JpushProvider):
        return JpushAdapter(
            name,
            config.base_url,
            _env(environ, config.app_key_env, name),
            _env(environ, config.master_secret_env, name),
            Http(),
        )
    return None
