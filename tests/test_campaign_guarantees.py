"""The campaign guarantees, broken on purpose (docs/guarantees.md, "A campaign killed
mid-run decides each user once" and "Priority lanes").

Real `herald serve` / `herald worker` processes on a real Redis, users written
straight into the store, and a campaign whose claims are accepted at once (a policy
copy where marketing does not wait for a send window, has no quiet hours and caps that
do not bite) sent by app push to the fake FCM, which counts what each device received:

- the process scanning the audience killed with SIGKILL mid-scan, twice, then started
  again: every user of the audience gets exactly one message, none outside it gets
  any, and the funnel counts each once;
- the same with `--processes 2`, each child scanning and delivering, children killed
  one after the other: no user decided twice;
- priority lanes: an order notice's latency (Push call to the fake FCM holding it)
  while a 100,000-user campaign floods the marketing lane, against the same without
  it, with the provider's rate bounding the campaign and with nothing but the
  process's CPU bounding it.

Each test prints its figures (run with ``-s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import yaml

from gateway.store.redis import RedisStore
from gateway.store.redis.queue import RedisQueue
from gateway.values.domain import Category, Platform, PushProvider
from gateway.values.profiles import DeviceToken
from herald.v1 import campaign_pb2, campaign_pb2_grpc, push_pb2, push_pb2_grpc, types_pb2
from tests.conftest import POLICIES, ROOT
from tests.e2e.channels_setup import fakes, policies_for
from tests.e2e.conftest import auth
from tests.helpers import free_port, herald, herald_env, wait_until

pytestmark = pytest.mark.redis

CAMPAIGN = "d11-guarantee"
TAG = "d11"


# --- set-up ------------------------------------------------------------------------------
def send_at_once(policy_dir: Path) -> Path:
    """Edit a policy copy so that a campaign's claims are accepted as they are decided:
    marketing does not arbitrate (no waiting for a send window), has no quiet hours and a
    cap no user reaches; double11.presale goes by app push only."""
    categories = policy_dir / "categories.yaml"
    data = yaml.safe_load(categories.read_text())
    data["categories"]["marketing"] = {
        "fail_mode": "closed",
        "dedup_window": "72h",
        "quiet_hours": {"mode": "exempt"},
        "arbitrate": False,
        "caps": [{"name": "daily", "window": "day", "limit": 100}],
    }
    categories.write_text(yaml.safe_dump(data, allow_unicode=True))
    scenarios = policy_dir / "scenarios" / "marketing.yaml"
    data = yaml.safe_load(scenarios.read_text())
    presale = data["scenarios"]["double11.presale"]
    presale["channels"] = ["APP_PUSH"]
    presale["content"] = {"app_push": presale["content"]["app_push"]}
    scenarios.write_text(yaml.safe_dump(data, allow_unicode=True))
    return policy_dir


@dataclass(frozen=True)
class NewUser:
    user_id: str
    token: str
    tags: tuple[str, ...] = ()


async def write_users(redis_url: str, users: Iterable[NewUser], at_once: int = 2000) -> float:
    """Profiles written straight into the store (``RedisStore.upsert_user``, as the
    ProfileService does, without the gRPC round trips): an Android device on FCM each.
    Returns the seconds it took."""
    began = time.monotonic()
    store = RedisStore(redis_url)
    await store.prepare()
    now = datetime.now(UTC)
    keep = timedelta(days=30)

    async def one(user: NewUser) -> None:
        device = DeviceToken(user.token, Platform.ANDROID, PushProvider.FCM)
        patch: dict[str, object] = {"device_tokens": (device,), "timezone": "Asia/Shanghai"}
        if user.tags:
            patch["tags"] = user.tags
        await store.upsert_user(user.user_id, patch, now, keep)

    try:
        batch: list[NewUser] = []
        for user in users:
            batch.append(user)
            if len(batch) == at_once:
                await asyncio.gather(*(one(u) for u in batch))
                batch = []
        await asyncio.gather(*(one(u) for u in batch))
    finally:
        await store.close()
    return time.monotonic() - began


def environment(
    redis_url: str, policies: Path, tmp_path: Path, name: str, fake_env: dict[str, str], **extra: str
) -> dict[str, str]:
    return herald_env(redis_url, policies, tmp_path / name / "var", **fake_env, **extra)


async def start_campaign(target: str, audience: str = f"tags any [{TAG}]") -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 30)
        stub = campaign_pb2_grpc.CampaignServiceStub(channel)
        spec = campaign_pb2.CampaignSpec(
            campaign_id=CAMPAIGN,
            scenario="double11.presale",
            audience=audience,
            variants=[campaign_pb2.Variant(name="A", weight=1)],
            params={"deposit": "50", "discount": "150"},
        )
        await stub.CreateCampaign(campaign_pb2.CreateCampaignRequest(campaign=spec), metadata=auth("marketing"))
        started = await stub.StartCampaign(
            campaign_pb2.CampaignAction(campaign_id=CAMPAIGN), metadata=auth("marketing")
        )
        assert started.state == campaign_pb2.CAMPAIGN_STATE_RUNNING


async def get_campaign(target: str) -> campaign_pb2.Campaign:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = campaign_pb2_grpc.CampaignServiceStub(channel)
        return await stub.GetCampaign(
            campaign_pb2.GetCampaignRequest(campaign_id=CAMPAIGN), metadata=auth("marketing"), timeout=10
        )


async def completed(target: str, within: float) -> campaign_pb2.Campaign:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        with suppress(grpc.aio.AioRpcError):  # a process starting again
            campaign = await get_campaign(target)
            if campaign.state == campaign_pb2.CAMPAIGN_STATE_COMPLETED:
                return campaign
        assert loop.time() < deadline, f"the campaign did not complete within {within}s"
        await asyncio.sleep(0.2)


@dataclass
class Scan:
    """Where the scan stood: users whose decision is committed (the funnel's
    ``targeted``), and of those, the ones whose shard cursor was saved after them."""

    decided: int
    saved: int

    @staticmethod
    async def read(store: RedisStore) -> Scan:
        progress = await store.campaign_progress(CAMPAIGN)
        counts = await store.funnel(CAMPAIGN)
        decided = sum(n for field, n in counts.items() if "|d:" in field)
        return Scan(decided, sum(p.matched for p in progress))


async def kill_mid_scan(pid: int, store: RedisStore, after: int, audience: int, within: float = 120.0) -> Scan:
    """SIGKILL ``pid`` once at least ``after`` users are decided and before all of them
    are, preferably at the worst instant: a chunk's decisions committed and its shard's
    cursor not yet saved past them (frozen with SIGSTOP first, so that what the store
    shows cannot change between the look and the kill). Returns where the scan stood."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        scan = await Scan.read(store)
        assert scan.decided < audience, "the scan finished before the kill; the test proves nothing"
        if scan.decided >= after:
            os.kill(pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(0.05)  # commands already sent land
                scan = await Scan.read(store)
                worst = scan.decided > scan.saved
                if worst or loop.time() > deadline - within / 2 or scan.decided > (after + audience) // 2:
                    os.kill(pid, signal.SIGKILL)
                    return scan
            finally:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)  # never left frozen (a killed one ignores it)
        assert loop.time() < deadline, "the scan never got under way"
        await asyncio.sleep(0.01)


async def drained(redis_url: str, within: float) -> None:
    """Wait until the delivery streams are empty (an entry is deleted when acked)."""
    store = RedisStore(redis_url)
    queue = RedisQueue(store)
    try:

        async def empty() -> bool:
            return sum((await queue.depth()).values()) == 0

        await wait_until(empty, within, "the delivery queue to drain")
    finally:
        await queue.close()
        await store.close()


@dataclass
class Tally:
    """What each device received from the fake FCM."""

    per_user: dict[str, Counter[str]]  # user -> message id -> sends received

    @staticmethod
    def of(sends: Sequence[dict[str, object]], user_of_token: dict[str, str]) -> Tally:
        per_user: dict[str, Counter[str]] = defaultdict(Counter)
        for send in sends:
            data = send["data"]
            assert isinstance(data, dict)
            per_user[user_of_token[str(send["token"])]][str(data["message_id"])] += 1
        return Tally(dict(per_user))

    def report(self, audience: set[str]) -> dict[str, int]:
        return {
            "reached": len(audience & self.per_user.keys()),
            "lost": len(audience - self.per_user.keys()),
            "outside the audience": len(self.per_user.keys() - audience),
            "decided twice (two messages)": sum(1 for got in self.per_user.values() if len(got) > 1),
            "sent twice (one message, again)": sum(1 for got in self.per_user.values() if max(got.values()) > 1),
        }


# --- 1. killed mid-scan ------------------------------------------------------------------
USERS = 20_000


def audience_users() -> tuple[list[NewUser], set[str]]:
    """u-0 ... u-19999; every tenth one outside the audience (no tag)."""
    users = [NewUser(f"u-{n}", f"tok-{n}", () if n % 10 == 0 else (TAG,)) for n in range(USERS)]
    return users, {u.user_id for u in users if u.tags}


@pytest.mark.timeout(400)
async def test_a_campaign_killed_mid_scan_sends_each_user_exactly_once(clean_redis: str, tmp_path: Path) -> None:
    users, audience = audience_users()
    user_of_token = {u.token: u.user_id for u in users}
    async with fakes() as fake:
        policies = send_at_once(policies_for(tmp_path, fake))
        seconds = await write_users(clean_redis, users)
        # The gateway (API and campaign runner) in one process, delivery in another: the
        # kills cut the scan, never a send.
        gateway_env = environment(clean_redis, policies, tmp_path, "gw", fake.environ(), HERALD_DELIVER="false")
        worker_env = environment(clean_redis, policies, tmp_path, "w", fake.environ())
        target = gateway_env["HERALD_LISTEN"]
        store = RedisStore(clean_redis)
        kills: list[Scan] = []
        try:
            async with herald("worker", worker_env, tmp_path / "w.log"):
                async with herald("serve", gateway_env, tmp_path / "gw-1.log") as first:
                    await start_campaign(target)
                    kills.append(await kill_mid_scan(first.pid, store, len(audience) // 5, len(audience)))
                    await first.wait()
                async with herald("serve", gateway_env, tmp_path / "gw-2.log") as second:
                    # The second process goes on from the saved cursors (the dead one's
                    # leases run out first) and is killed in turn.
                    kills.append(
                        await kill_mid_scan(second.pid, store, kills[0].decided + len(audience) // 5, len(audience))
                    )
                    await second.wait()
                async with herald("serve", gateway_env, tmp_path / "gw-3.log"):
                    done = await completed(target, 180)
                    await drained(clean_redis, 60)

                    async def all_reached() -> bool:
                        return len(fake.fcm.sends) >= len(audience)

                    await wait_until(all_reached, 60, "every user of the audience to be sent to")
                    await asyncio.sleep(1.0)  # anything sent twice arrives too
        finally:
            await store.close()
        tally = Tally.of(fake.fcm.sends, user_of_token)
    figures = tally.report(audience)
    row = done.funnel[0]
    print(
        f"\ncampaign killed mid-scan twice ({len(users)} users written in {seconds:.1f}s, audience {len(audience)}): "
        f"killed at {[(k.decided, k.saved) for k in kills]} (decided, saved); {figures}; funnel targeted "
        f"{row.targeted} accepted {row.accepted} sent {row.sent}; progress matched {done.progress.matched} "
        f"scanned {done.progress.scanned}"
    )
    assert figures == {
        "reached": len(audience),
        "lost": 0,
        "outside the audience": 0,
        "decided twice (two messages)": 0,
        "sent twice (one message, again)": 0,
    }
    assert row.variant == "" and row.targeted == row.accepted == len(audience)
    assert done.progress.matched == len(audience)
    assert len(fake.fcm.sends) == len(audience)


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


@pytest.mark.timeout(400)
async def test_two_processes_killed_one_after_the_other_decide_each_user_once(clean_redis: str, tmp_path: Path) -> None:
    users, audience = audience_users()
    user_of_token = {u.token: u.user_id for u in users}
    async with fakes() as fake:
        policies = send_at_once(policies_for(tmp_path, fake))
        await write_users(clean_redis, users)
        env = environment(
            clean_redis,
            policies,
            tmp_path,
            "gw",
            fake.environ(),
            HERALD_PROCESSES="2",
            HERALD_ADMIN_LISTEN=f"127.0.0.1:{free_port()}",
        )
        target = env["HERALD_LISTEN"]
        store = RedisStore(clean_redis)
        kills: list[Scan] = []
        try:
            async with herald("serve", env, tmp_path / "serve.log") as supervisor:

                async def both_up() -> bool:
                    return len(children(supervisor.pid)) == 2

                await wait_until(both_up, 30, "both processes to start")
                first, second = children(supervisor.pid)
                await start_campaign(target)
                # Each child scans shards and delivers; one is killed, started again by
                # the supervisor, then the other.
                kills.append(await kill_mid_scan(first, store, len(audience) // 5, len(audience)))
                kills.append(await kill_mid_scan(second, store, kills[0].decided + len(audience) // 5, len(audience)))
                done = await completed(target, 180)
                await drained(clean_redis, 60)

                async def all_reached() -> bool:
                    return len({str(s["token"]) for s in fake.fcm.sends}) >= len(audience)

                await wait_until(all_reached, 60, "every user of the audience to be sent to")
                await asyncio.sleep(1.0)
        finally:
            await store.close()
        tally = Tally.of(fake.fcm.sends, user_of_token)
    figures = tally.report(audience)
    row = done.funnel[0]
    print(
        f"\n--processes 2, each child killed once mid-scan (audience {len(audience)}): killed at "
        f"{[(k.decided, k.saved) for k in kills]} (decided, saved); {figures}; funnel targeted {row.targeted} "
        f"accepted {row.accepted}; progress matched {done.progress.matched}"
    )
    assert figures["reached"] == len(audience)
    assert figures["lost"] == figures["outside the audience"] == figures["decided twice (two messages)"] == 0
    # A killed child also cut the deliveries it had in flight: those taken over are sent
    # again with the same message id, which FCM does not deduplicate (docs/guarantees.md,
    # the limits). At most what the two killed children held.
    assert figures["sent twice (one message, again)"] <= 2 * 128
    assert row.targeted == row.accepted == done.progress.matched == len(audience)


# --- 2. priority lanes -------------------------------------------------------------------
CAMPAIGN_USERS = 100_000
BASIC = 200  # order notices a phase
BASIC_RATE = 20.0  # a second


def fcm_only_policies(target: Path, fcm_url: str, rate: float | None) -> Path:
    """The sample policies with FCM pointed at ``fcm_url`` and given ``rate`` (sends a
    second, every process's; None: no limit of ours), edited by ``send_at_once``. The
    other providers, never used here, go to the sandbox."""
    policy_dir = target / "policies"
    shutil.copytree(POLICIES, policy_dir)
    channels = policy_dir / "channels.yaml"
    data = yaml.safe_load(channels.read_text())
    data["providers"]["fcm"]["base_url"] = fcm_url
    if rate is not None:
        data["providers"]["fcm"]["rate"] = rate
    channels.write_text(yaml.safe_dump(data, allow_unicode=True))
    return send_at_once(policy_dir)


@dataclass
class FcmProcess:
    """The fake FCM of tests/fakes/standalone.py and what its receipts file says."""

    url: str
    service_account: Path
    receipts: Path
    offset: int = 0
    total: int = 0
    arrived: dict[str, float] = field(default_factory=dict)  # message id -> first arrival (monotonic)

    def read(self) -> None:
        """Take in the receipts written since the last read (whole lines only)."""
        with self.receipts.open("rb") as file:
            file.seek(self.offset)
            chunk = file.read()
        whole = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(whole)
        for line in whole.decode().splitlines():
            at, _, message_id = line.split(" ")
            self.total += 1
            self.arrived.setdefault(message_id, float(at))


@asynccontextmanager
async def fcm_process(tmp_path: Path) -> AsyncIterator[FcmProcess]:
    """The fake FCM in a process of its own: the campaign's flood of sends neither
    slows this test's event loop (which times the order notices) nor is slowed by it."""
    account, receipts = tmp_path / "fcm-account.json", tmp_path / "fcm-receipts.txt"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.standalone",
        "--service-account",
        str(account),
        "--receipts",
        str(receipts),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
        assert line.startswith("READY "), line
        yield FcmProcess(line.split()[1], account, receipts)
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 20)


def shipped(phase: str, i: int) -> push_pb2.PushRequest:
    return push_pb2.PushRequest(
        request_id=f"{phase}-{i}",
        user_id=f"b-{i % BASIC}",
        scenario="order.shipped",
        params={"order_id": f"O-{phase}-{i}", "carrier": "SF", "tracking_no": f"T{i}"},
    )


@dataclass
class Latencies:
    """Seconds from each Push call to its answer, and to the fake FCM holding it."""

    answered: list[float]
    arrived: list[float]

    def __str__(self) -> str:
        def ms(values: Sequence[float], q: float) -> str:
            return f"{quantile(values, q) * 1000:.1f}"

        return (
            f"answered p50 {ms(self.answered, 0.5)} ms p95 {ms(self.answered, 0.95)} ms; at FCM p50 "
            f"{ms(self.arrived, 0.5)} ms p95 {ms(self.arrived, 0.95)} ms max {max(self.arrived) * 1000:.1f} ms"
        )


def quantile(values: Sequence[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


async def order_notices(stub: push_pb2_grpc.PushServiceStub, fcm: FcmProcess, phase: str) -> Latencies:
    """BASIC order notices at BASIC_RATE, each sent on its schedule whatever the others'
    answers take, timed."""
    called: dict[str, float] = {}
    answered: list[float] = []

    async def one(i: int) -> None:
        began = time.monotonic()
        answer = await stub.Push(shipped(phase, i), metadata=auth("order"), timeout=30)
        answered.append(time.monotonic() - began)
        assert answer.outcome == types_pb2.ACCEPTED, answer
        called[answer.message_id] = began

    start = time.monotonic()
    sends = []
    for i in range(BASIC):
        await asyncio.sleep(max(0.0, start + i / BASIC_RATE - time.monotonic()))
        sends.append(asyncio.create_task(one(i)))
    await asyncio.gather(*sends)

    async def all_arrived() -> bool:
        fcm.read()
        return called.keys() <= fcm.arrived.keys()

    await wait_until(all_arrived, 60, f"the {phase} order notices to reach the fake FCM")
    return Latencies(sorted(answered), sorted(fcm.arrived[m] - began for m, began in called.items()))


CPU_BOUND = (
    "without a provider rate the campaign runs the one gateway process flat out: its decisions and marketing "
    "sends share the event loop with the order notices' Push and delivery, and asyncio has no priorities "
    "(measured on 2 cores: p50 6-11x, 25-47 ms against 3.4-4.5 ms)"
)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("fcm_rate", "split"),
    [
        (500.0, False),
        pytest.param(None, False, marks=pytest.mark.xfail(reason=CPU_BOUND, strict=False)),
        (None, True),
    ],
    ids=["fcm-rate-500", "no-rate", "no-rate-own-worker"],
)
async def test_order_notices_keep_their_latency_during_a_100k_campaign(
    clean_redis: str, tmp_path: Path, fcm_rate: float | None, split: bool
) -> None:
    """One `herald serve` (API, campaign runner and delivery) on Redis; the campaign and
    the order notices both go by app push to the same fake FCM. The provider's rate (a
    quota, as every real provider has) or the process itself bounds how fast the
    campaign goes; the marketing lane holds a backlog either way. The two phases run
    one after the other: other work starting on the machine between them skews the
    ratio (measured on 2 cores: 1.5-1.7x on a quiet machine, 1.7-1.9x with other
    benchmarks running).

    ``split``: the deployment docs/deployment.md gives for campaigns without a provider
    rate: the gateway takes the basic and reminder lanes and scans no campaign; a
    worker of its own scans the campaign and takes the marketing lane, under `nice` as
    it shares the host's 2 cores with the gateway (without it the ratio measured
    1.6-1.7x here and 2.0x once in CI; with it 1.3-1.5x)."""
    async with fcm_process(tmp_path) as fcm:
        policies = fcm_only_policies(tmp_path, fcm.url, fcm_rate)
        campaign_users = (NewUser(f"u-{n}", f"tok-{n}", (TAG,)) for n in range(CAMPAIGN_USERS))
        basic_users = (NewUser(f"b-{n}", f"btok-{n}") for n in range(BASIC))
        seconds = await write_users(clean_redis, [*campaign_users, *basic_users])
        fcm_env = {"HERALD_FCM_SERVICE_ACCOUNT_FILE": str(fcm.service_account)}
        own = {"HERALD_DELIVER_LANES": "basic,reminder", "HERALD_CAMPAIGNS": "false"} if split else {}
        env = environment(clean_redis, policies, tmp_path, "gw", {**fcm_env, **own})
        worker_env = environment(clean_redis, policies, tmp_path, "w", {**fcm_env, "HERALD_DELIVER_LANES": "marketing"})
        store = RedisStore(clean_redis)
        queue = RedisQueue(store)
        try:
            async with (
                herald("worker", worker_env, tmp_path / "w.log", nice=19) if split else contextlib.nullcontext(),
                herald("serve", env, tmp_path / "gw.log"),
                grpc.aio.insecure_channel(env["HERALD_LISTEN"]) as channel,
            ):
                await asyncio.wait_for(channel.channel_ready(), 30)
                stub = push_pb2_grpc.PushServiceStub(channel)
                for i in range(20):  # warm: FCM's token, connections
                    await stub.Push(shipped("warm", i), metadata=auth("order"))
                quiet = await order_notices(stub, fcm, "quiet")

                await start_campaign(env["HERALD_LISTEN"])

                async def flooding() -> bool:
                    fcm.read()
                    sent = fcm.total - BASIC - 20
                    return sent >= 2_000 and (await queue.depth())[Category.MARKETING] >= 1_000

                await wait_until(flooding, 120, "the campaign's sends to flow and its lane to fill")
                marketing_before, began = fcm.total, time.monotonic()
                busy = await order_notices(stub, fcm, "busy")
                window = time.monotonic() - began
                depth_after = (await queue.depth())[Category.MARKETING]
                fcm.read()
                marketing = fcm.total - marketing_before - BASIC
                campaign = await get_campaign(env["HERALD_LISTEN"])
        finally:
            await queue.close()
            await store.close()
    print(
        f"\npriority lanes, FCM rate {fcm_rate or 'none'} ({CAMPAIGN_USERS} campaign users written in "
        f"{seconds:.1f}s); order.shipped, {BASIC} at {BASIC_RATE:g}/s, Push call to FCM holding it. Without the "
        f"campaign: {quiet}. During it: {busy}; meanwhile the campaign sent {marketing} "
        f"({marketing / window:.0f}/s), its lane held {depth_after} at the end, {campaign.progress.matched} "
        f"of {CAMPAIGN_USERS} decided"
    )
    # The campaign flooded the marketing lane for the whole measurement.
    assert campaign.state == campaign_pb2.CAMPAIGN_STATE_RUNNING and depth_after > 0 and marketing > 0
    # Behind the marketing lane an order notice would wait for its backlog: thousands of
    # jobs, seconds. Beside it, the notices' median may grow by what the busy machine
    # costs them: at most twice the quiet one, or 10 ms more, whichever is larger (on 2
    # shared cores a busy CI machine measured 2.0-2.1x, 5 ms more, against 1.3-1.9x here).
    quiet_p50 = quantile(quiet.arrived, 0.5)
    assert quantile(busy.arrived, 0.5) <= max(2 * quiet_p50, quiet_p50 + 0.010)
