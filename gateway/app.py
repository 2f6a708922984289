"""The gateway assembled: store, policy, credentials, pipeline, delivery, scheduler, the
gRPC server and the admin HTTP endpoints; started and stopped as one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CONTENT_TYPE_LATEST

from channels.base import Delivery
from channels.registry import ProviderError, Providers, build_providers
from channels.sandbox import SandboxAdapter
from gateway.admin import AdminApi
from gateway.api import wire
from gateway.api.auth import Credentials
from gateway.api.campaign_servicer import CampaignServicer
from gateway.api.servicers import Admission, ProfileServicer, PushServicer
from gateway.autostop import AutoStop
from gateway.campaign_runner import CampaignRunner
from gateway.clock import Clock, SystemClock
from gateway.config import SAMPLE_CREDENTIALS, Settings
from gateway.core.campaigns import Campaigns
from gateway.core.conversions import Conversions
from gateway.core.pipeline import PushPipeline, lifetimes
from gateway.core.ratelimit import RateLimiter
from gateway.core.users import Users
from gateway.delivery.dispatcher import Dispatcher
from gateway.delivery.spool import Spool, drain_forever
from gateway.errors import HeraldError, PolicyError, PolicyProblem
from gateway.killswitches import KillSwitches
from gateway.links import Click, ClickTokens
from gateway.logs import get_logger
from gateway.loops import every, stop_tasks
from gateway.metrics import Metrics, exposition
from gateway.policy.holder import PolicyHolder
from gateway.policy.model import Policy
from gateway.public import Clicks, Unsubscribes, unsubscribe_key
from gateway.scheduler import Scheduler
from gateway.store.base import Queue, Store
from gateway.store.memory import MemoryQueue, MemoryStore
from gateway.store.redis import RedisQueue, RedisStore
from gateway.store.redis.connection import Wait
from gateway.unsubscribe import Unsubscribe, UnsubscribeTokens
from gateway.values.domain import Category
from gateway.values.jobs import Job
from gateway.webhooks import Webhooks
from herald.v1 import campaign_pb2, campaign_pb2_grpc, profile_pb2, profile_pb2_grpc, push_pb2, push_pb2_grpc

log = get_logger(__name__)
# How long replaced provider adapters stay open for the sends already using them.
RETIRE_AFTER = 30.0
SERVICES = (
    push_pb2.DESCRIPTOR.services_by_name["PushService"].full_name,
    profile_pb2.DESCRIPTOR.services_by_name["ProfileService"].full_name,
    campaign_pb2.DESCRIPTOR.services_by_name["CampaignService"].full_name,
)


def build_store(settings: Settings, clock: Clock, metrics: Metrics) -> Store:
    if not settings.redis_url:
        return MemoryStore(clock)
    return RedisStore(
        settings.redis_url,
        cluster=settings.redis_cluster,
        shards=settings.redis_shards,
        on_round_trip=lambda op: metrics.of(metrics.store_round_trips, op).inc(),
        wait=Wait(settings.redis_wait_replicas, settings.redis_wait_ms),
        on_wait_short=metrics.replication_short.inc,
    )


def build_queue(settings: Settings, store: Store) -> Queue:
    if isinstance(store, MemoryStore):
        return MemoryQueue(store)
    assert isinstance(store, RedisStore)
    return RedisQueue(store, reclaim_after=settings.reclaim_seconds)


class Gateway:
    """``api`` False: a delivery worker (no gRPC API, no scheduler)."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
        store: Store | None = None,
        environ: Mapping[str, str] | None = None,
        api: bool = True,
    ) -> None:
        self.settings = settings
        self.api = api
        self.clock = clock or SystemClock()
        self.metrics = metrics or Metrics()
        self.store = store or build_store(settings, self.clock, self.metrics)
        self.policies = PolicyHolder(settings.policy_dir, self.metrics)
        self.credentials = self._load_credentials()
        self.switches = KillSwitches(self.store, self.clock, self.metrics)
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self._sandbox = SandboxAdapter(settings.data_dir / "outbox")
        self.providers: Providers = self._build_providers(self.policies.current, None)
        self._next_providers: tuple[str, Providers] | None = None
        self._retired: list[Providers] = []
        self._retiring: list[asyncio.Task[None]] = []
        self.policies.check_with(self._check_providers)
        self.policies.on_change(self._swap_providers)
        self.tokens: UnsubscribeTokens | None = None
        self.clicks: ClickTokens | None = None
        self.users = Users(self.store, self.policies, self.clock)
        self.queue = build_queue(settings, self.store)
        # Fail-open decisions wait on disk for the store: only a store that can fail.
        self.spool = None if isinstance(self.store, MemoryStore) else Spool(settings.data_dir / "spool")
        self.auto_stop = AutoStop(self.store, self.switches, self.policies, self.metrics)
        self.dispatcher = Dispatcher(
            self.queue,
            self.store,
            self.policies,
            self.switches,
            lambda channel, device: self.providers.for_channel(channel, self.policies.current, device),
            self.users,
            self.clock,
            self.metrics,
            in_flight=settings.delivery_workers,
            auto_stop=self.auto_stop,
            lanes=settings.lanes,
        )
        self.pipeline = PushPipeline(
            self.store,
            self.policies,
            self.switches,
            self.clock,
            self.metrics,
            RateLimiter(),
            spool=self.spool,
            down=self.dispatcher.down_channels,
        )
        self.scheduler = Scheduler(self.store, self.pipeline, self.clock, self.metrics)
        self.campaigns = Campaigns(self.store, self.policies, self.clock)
        self.campaign_runner = CampaignRunner(
            self.store,
            self.pipeline,
            self.campaigns,
            self.policies,
            self.clock,
            self.metrics,
            backlog=self._marketing_backlog,
            concurrency=settings.campaign_scans,
            chunk=settings.campaign_chunk,
        )
        self.admission = Admission(settings.max_in_flight, self.metrics)
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.admin_port = 0
        self.public_port = 0
        self._runners: list[web.AppRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self.metrics.prime(sorted(self.policies.current.business_units), sorted({"sandbox", *self.providers.adapters}))

    def _load_credentials(self) -> Credentials:
        if not self.api:  # a worker serves no API: no key to check, no sample keys to warn about
            return Credentials((), "<worker: none>")
        credentials = Credentials.load(self.settings.credentials)
        if self.settings.credentials == SAMPLE_CREDENTIALS:
            log.warning("sample_credentials", detail="serving with the SAMPLE API keys: not for production")
        unknown = credentials.business_units() - set(self.policies.current.business_units)
        if unknown:
            log.warning("credentials_for_unknown_units", units=sorted(unknown))
        return credentials

    def _build_providers(self, policy: Policy, previous: Providers | None) -> Providers:
        """The provider adapters of ``policy``; a PolicyError naming what is missing
        when the sandbox is off."""
        try:
            built = build_providers(
                policy,
                self.environ,
                self.store,
                self.clock,
                self._sandbox,
                on_mass_batch=self.metrics.mass_batch_size.observe,
                unsubscribe_url=self.unsubscribe_url,
                sandbox_allowed=self.settings.sandbox,
                previous=previous,
            )
        except ProviderError as exc:
            raise PolicyError(
                [PolicyProblem(str(self.settings.policy_dir), "providers", p) for p in exc.problems]
            ) from None
        for name, why in built.sandboxed.items():
            if previous is None or name not in previous.sandboxed:
                log.warning(
                    "provider_sandboxed", provider=name, detail=f"{why}: its deliveries go to the sandbox outbox"
                )
        return built

    def _check_providers(self, policy: Policy) -> None:
        """A new policy set serves only if its providers can be built."""
        self._next_providers = (policy.version, self._build_providers(policy, self.providers))

    def _swap_providers(self, policy: Policy) -> None:
        """The new set serves: its adapters replace the old; the old ones that are not
        reused are closed once the sends in flight on them are done."""
        if self._next_providers is None or self._next_providers[0] != policy.version:
            self._next_providers = (policy.version, self._build_providers(policy, self.providers))
        old, self.providers = self.providers, self._next_providers[1]
        self._next_providers = None
        self.metrics.prime(sorted(policy.business_units), sorted({"sandbox", *self.providers.adapters}))
        log.info(
            "providers_rebuilt", providers=sorted(self.providers.adapters), sandboxed=sorted(self.providers.sandboxed)
        )

        async def retire() -> None:
            await asyncio.sleep(RETIRE_AFTER)
            await old.close(keep=self.providers)

        self._retired.append(old)
        with contextlib.suppress(RuntimeError):  # no running loop: nothing in flight either
            self._retiring.append(asyncio.get_running_loop().create_task(retire(), name="retire-providers"))

    def reload(self) -> None:
        """SIGHUP: policies and credentials again; a bad new set keeps the old one."""
        self.policies.reload()
        try:
            self.credentials = self._load_credentials()
        except PolicyError as exc:
            log.error("credentials_reload_refused", problems=[str(p) for p in exc.problems])

    async def _marketing_backlog(self) -> int:
        """Marketing deliveries queued or in flight, every process's (the campaigns'
        runner decides no faster than they go out)."""
        return (await self.queue.depth())[Category.MARKETING]

    @property
    def sandbox(self) -> SandboxAdapter:
        return self.providers.sandbox

    async def _update_gauges(self) -> None:
        if self.spool is not None:
            self.metrics.spooled.set(self.spool.count())
        try:
            for lane, depth in (await self.queue.depth()).items():
                self.metrics.delivery_queue_depth.labels(lane.value).set(depth)
            for lane, age in (await self.queue.oldest(self.clock.now())).items():
                self.metrics.delivery_queue_age.labels(lane.value).set(age)
            parked, waiting = await self.queue.held_counts()
            self.metrics.parked.set(parked)
            self.metrics.waiting.set(waiting)
        except HeraldError:
            self.metrics.store_errors.labels("queue_depth").inc()
        for provider, state in self.dispatcher.breaker_states().items():
            self.metrics.breaker_state.labels(provider).set(state)

    def public_base(self) -> str:
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/")
        listen = self.settings.public_listen or self.settings.admin_listen
        return f"http://{listen.rpartition(':')[0] or '127.0.0.1'}:{self.public_port}"

    def unsubscribe_url(self, delivery: Delivery) -> str | None:
        if self.tokens is None:
            return None
        what = Unsubscribe(
            delivery.user_id, delivery.category, delivery.channel, delivery.scenario, delivery.campaign_id
        )
        return f"{self.public_base()}/unsubscribe/{self.tokens.issue(what, self.clock.now())}"

    def click_url(self, job: Job, url: str) -> str:
        assert self.clicks is not None
        base = f"{self.public_base()}/c/"
        if url.startswith(base):
            return url  # already tracked
        claim = job.claim
        click = Click(job.message_id, claim.user_id, claim.campaign_id, claim.variant, url)
        return base + self.clicks.issue(click, self.clock.now())

    async def start(self) -> None:
        await self.store.ping()  # fail fast, with the store's own message
        await self.store.prepare()
        await self.switches.refresh()
        key = await unsubscribe_key(self.store, self.settings.unsubscribe_key.get_secret_value())
        self.tokens = UnsubscribeTokens(key)
        self.clicks = ClickTokens(key)
        self.dispatcher.link_for = self.click_url
        delivering = self.settings.deliver or not self.api
        if delivering:
            self.dispatcher.start()
        self._tasks = [
            asyncio.create_task(self.switches.run(self._stopping), name="kill-switches"),
            asyncio.create_task(self.policies.watch(self._stopping), name="policy-watch"),
            asyncio.create_task(every(1.0, self._update_gauges, self._stopping, "gauges"), name="gauges"),
        ]
        if self.api:
            self._tasks.append(asyncio.create_task(self.scheduler.run(self._stopping), name="scheduler"))
        if self.settings.campaigns:
            self._tasks.append(asyncio.create_task(self.campaign_runner.run(self._stopping), name="campaigns"))
        if delivering:
            self._tasks.append(asyncio.create_task(self.dispatcher.watch_aside(self._stopping), name="aside"))
        if self.spool is not None:
            if self.spool.count():
                log.warning("spool_not_empty", entries=self.spool.count(), detail="handing it to the store")
            self._tasks.append(
                asyncio.create_task(
                    drain_forever(self.spool, self.store, lambda: lifetimes(self.policies.current), self._stopping),
                    name="spool",
                )
            )
        if self.api:
            self._tasks.append(asyncio.create_task(self._watch_health(), name="health"))
        await self._start_admin()
        if self.api:
            await self._start_grpc()
        log.info(
            "started",
            role="gateway" if self.api else "worker",
            grpc=f"{self.settings.listen.rsplit(':', 1)[0]}:{self.port}" if self.api else None,
            admin=f"{self.settings.admin_listen.rsplit(':', 1)[0]}:{self.admin_port}",
            store=self.store.kind,
            queue=self.queue.kind,
            policy=self.policies.current.version,
        )

    async def _watch_health(self, interval: float = 1.0) -> None:
        """gRPC health follows readiness: SERVING only while a valid policy is loaded and
        the store answers, so load balancers route around a replica that lost Redis."""
        serving: bool | None = True
        while not self._stopping.is_set():
            try:
                await asyncio.wait_for(self.store.ping(), interval * 2)
                problem = ""
            except (HeraldError, TimeoutError) as exc:
                problem = exc.message if isinstance(exc, HeraldError) else "store ping timed out"
            ok = not problem and self.policies.current is not None
            if ok != serving and self.server is not None:
                status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
                for service in ("", *SERVICES):
                    await self.health.set(service, status)
                log.info("health_changed", serving=ok, problem=problem or None)
                serving = ok
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)

    async def _start_grpc(self) -> None:
        # grpc's own limit is the backstop for every method (GetMessage, health, ...);
        # Push and PushBatch meet Herald's door first, which says what to do.
        self.server = grpc.aio.server(
            # Sharing the port is for the processes of one `serve --processes N` only:
            # otherwise a second gateway on the same port is an error, not a silent split.
            options=[("grpc.so_reuseport", 1 if self.settings.reuse_port else 0)],
            maximum_concurrent_rpcs=self.settings.max_in_flight * 2 + 64,
        )
        guarded = wire.guard(self.server, self.metrics)  # undecodable bodies and metadata: see wire.py
        push_pb2_grpc.add_PushServiceServicer_to_server(
            PushServicer(self.pipeline, lambda: self.credentials, self.policies, self.metrics, self.admission),
            guarded,
        )
        profile_pb2_grpc.add_ProfileServiceServicer_to_server(
            ProfileServicer(self.users, lambda: self.credentials, self.policies, self.metrics, self.clock.now),
            guarded,
        )
        campaign_pb2_grpc.add_CampaignServiceServicer_to_server(
            CampaignServicer(
                self.campaigns,
                Conversions(self.store, self.policies, self.clock),
                self.store,
                lambda: self.credentials,
                self.policies,
                self.metrics,
                self.clock.now,
            ),
            guarded,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self.port = self.server.add_insecure_port(self.settings.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.settings.listen} (in use, or not an address of this machine)")
        await self.server.start()
        for service in ("", *SERVICES):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)

    async def _listen(self, app: web.Application, address: str) -> int:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self._runners.append(runner)
        host, _, port = address.rpartition(":")
        site = web.TCPSite(runner, host or "127.0.0.1", int(port), reuse_port=self.settings.reuse_port or None)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else int(port)

    def _public_routes(self, app: web.Application) -> None:
        assert self.tokens is not None
        Unsubscribes(
            self.tokens, self.users, self.store, self.policies, self.clock, self.metrics, self.auto_stop
        ).add_routes(app)
        assert self.clicks is not None
        Clicks(self.clicks, self.store, self.policies, self.clock).add_routes(app)
        Webhooks(
            self.store, self.users, self.policies, self.clock, self.metrics, self.environ, self.auto_stop
        ).add_routes(app)

    async def _start_admin(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics_page)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        token = self.settings.admin_token.get_secret_value()
        AdminApi(token, self.switches, self.store, self.policies, self.clock).add_routes(app)
        if not self.settings.public_listen:
            self._public_routes(app)
        self.admin_port = await self._listen(app, self.settings.admin_listen)
        self.public_port = self.admin_port
        if self.settings.public_listen:
            public = web.Application(client_max_size=1024**2)
            self._public_routes(public)
            self.public_port = await self._listen(public, self.settings.public_listen)

    async def _metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=exposition(self.metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, request: web.Request) -> web.Response:
        try:
            await self.store.ping()
        except HeraldError as exc:
            return web.json_response({"status": "not ready", "store": exc.message}, status=503)
        return web.json_response({"status": "ready", "policy": self.policies.current.version, "store": self.store.kind})

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting, let calls in flight finish, deliver what is queued, close."""
        grace = self.settings.grace_seconds if grace is None else grace
        await self.health.enter_graceful_shutdown()
        if self.server is not None:
            await self.server.stop(grace)
        await stop_tasks(self._tasks, self._stopping, grace)
        if self.queue.kind == "memory" and not await self.dispatcher.drain(grace):
            # On Redis what is queued stays in the stream for the other workers.
            log.warning("shutdown_with_deliveries_queued", detail="grace period ran out")
        await self.dispatcher.stop(grace)
        for task in self._retiring:
            task.cancel()
        for old in self._retired:
            await old.close(keep=self.providers)
        await self.providers.close()
        await self.queue.close()
        for runner in self._runners:
            await runner.cleanup()
        self._runners = []
        await self.store.close()
        if self.spool is not None and self.spool.count():
            log.warning(
                "spool_kept",
                entries=self.spool.count(),
                path=str(self.spool.path),
                detail="fail-open decisions wait on disk; the next start hands them to the store",
            )
        log.info("stopped")
