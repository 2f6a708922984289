"""Herald on a real Redis Cluster (3 masters, 1 replica each; tests/cluster.py).

Real `herald serve` and `herald worker` processes with `HERALD_REDIS_CLUSTER=true` and
one node's URL, the fake WeChat as the provider:

- two gateways and a worker: caps held exactly across the gateways, deliveries through
  the sharded streams, a scheduled claim released, a kill switch set through one
  gateway seen by the other within a second, and every key on every master with a TTL
  unless ``keys.LIVES_FOREVER`` says why not;
- a master killed with SIGKILL while its users are pushed: how long until Herald
  answers ACCEPTED for them again, and what was lost (printed; run with ``-s``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import grpc
import pytest
from redis.crc import key_slot

from gateway.store import keys
from gateway.store.shards import DEFAULT_SHARDS, shard_of, tags
from herald.v1 import profile_pb2, profile_pb2_grpc, push_pb2, push_pb2_grpc, types_pb2
from tests.cluster import Cluster
from tests.e2e.channels_setup import Fakes, fakes, policies_for
from tests.e2e.conftest import auth
from tests.e2e.test_push import ts
from tests.helpers import free_port, herald, herald_env, wait_until
from tests.test_replicas import daytime_zone

pytestmark = pytest.mark.cluster
ADMIN_TOKEN = "adm-cluster-0123456789"


def environment(fake: Fakes, seed: str, policies: Path, tmp_path: Path, name: str, **extra: str) -> dict[str, str]:
    settings = {
        **fake.environ(),
        "HERALD_REDIS_CLUSTER": "true",
        "HERALD_ADMIN_LISTEN": f"127.0.0.1:{free_port()}",  # the test calls the admin API
        "HERALD_ADMIN_TOKEN": ADMIN_TOKEN,
        **extra,
    }
    return herald_env(seed, policies, tmp_path / name, **settings)


def follower(i: int, zone: str = "Asia/Shanghai") -> profile_pb2.UpsertUserRequest:
    return profile_pb2.UpsertUserRequest(
        user=profile_pb2.User(
            user_id=f"u-{i}",
            timezone=zone,
            wechat=profile_pb2.WeChatIdentity(openid=f"oCluster{i:06d}xyzxyzxyzxyzx", following=True),
            device_tokens=[profile_pb2.DeviceToken(token=f"t{i}", platform=profile_pb2.IOS, provider=profile_pb2.APNS)],
        )
    )


def shipped(i: int, user: int) -> push_pb2.PushRequest:
    return push_pb2.PushRequest(
        request_id=f"r-{i}",
        user_id=f"u-{user}",
        scenario="order.shipped",
        params={"order_id": f"O-{i}", "carrier": "SF", "tracking_no": f"T{i}"},
    )


def keys_without_ttl(cluster: Cluster) -> list[str]:
    """Every Herald key on every master that has no TTL and is not one keys.py names."""
    found = []
    for master in cluster.masters:
        with master.client() as r:
            for key in r.scan_iter(match=f"{keys.PREFIX}:*", count=1000):
                name = key if isinstance(key, str) else key.decode()
                if r.ttl(key) == -1 and not keys.lives_forever(name):
                    found.append(name)
    return found


@pytest.mark.timeout(240)
async def test_two_gateways_and_a_worker_on_a_cluster(
    clean_cluster: str, redis_cluster: Cluster, tmp_path: Path
) -> None:
    zone = daytime_zone()
    async with fakes() as fake:
        policies = policies_for(tmp_path, fake)
        a_env = environment(fake, clean_cluster, policies, tmp_path, "a", HERALD_DELIVER="false")
        b_env = environment(fake, clean_cluster, policies, tmp_path, "b", HERALD_DELIVER="false")
        w_env = environment(fake, clean_cluster, policies, tmp_path, "w")
        async with (
            herald("serve", a_env, tmp_path / "a.log"),
            herald("serve", b_env, tmp_path / "b.log"),
            herald("worker", w_env, tmp_path / "w.log"),
        ):
            a = grpc.aio.insecure_channel(a_env["HERALD_LISTEN"])
            b = grpc.aio.insecure_channel(b_env["HERALD_LISTEN"])
            await asyncio.wait_for(asyncio.gather(a.channel_ready(), b.channel_ready()), 30)
            users = 40
            await profile_pb2_grpc.ProfileServiceStub(a).UpsertUsers(
                profile_pb2.UpsertUsersRequest(requests=[follower(i, zone) for i in range(users)]),
                metadata=auth("order"),
            )
            stubs = [push_pb2_grpc.PushServiceStub(a), push_pb2_grpc.PushServiceStub(b)]

            # Caps exactly: 12 reminders a user over both gateways at once, 2 a day pass.
            async def reminder(user: int, n: int) -> tuple[int, int]:
                request = push_pb2.PushRequest(
                    request_id=f"pd-{user}-{n}",
                    user_id=f"u-{user}",
                    scenario="price.drop",
                    params={"item_name": "kettle", "new_price": "99"},
                )
                answer = await stubs[n % 2].Push(request, metadata=auth("growth"))
                return user, answer.outcome

            results = await asyncio.gather(*(reminder(u, n) for n in range(12) for u in range(users)))
            accepted = Counter(user for user, outcome in results if outcome == types_pb2.ACCEPTED)
            assert dict(accepted) == {u: 2 for u in range(users)}, Counter(o for _, o in results)

            # Deliveries through the sharded streams, by the worker.
            answers = await asyncio.gather(
                *(stubs[i % 2].Push(shipped(i, i % users), metadata=auth("order")) for i in range(200))
            )
            assert {x.outcome for x in answers} == {types_pb2.ACCEPTED}

            # A scheduled claim, released by whichever gateway's scheduler takes it.
            later = push_pb2.PushRequest(
                request_id="later-1",
                user_id="u-1",
                scenario="order.shipped",
                params={"order_id": "O-later", "carrier": "SF", "tracking_no": "T-later"},
            )
            later.not_before.CopyFrom(ts(datetime.now(UTC) + timedelta(seconds=3)))
            scheduled = await stubs[0].Push(later, metadata=auth("order"))
            assert scheduled.outcome == types_pb2.SCHEDULED

            wanted = {f"{x.message_id}.wechat_template" for x in answers} | {f"{scheduled.message_id}.wechat_template"}

            async def all_delivered() -> bool:
                return wanted <= set(fake.wechat.delivered_ids())

            await wait_until(all_delivered, 60, "the pushes and the scheduled claim to be delivered")
            assert len(fake.wechat.template_sends) == len(wanted)  # each once
            status = await stubs[1].GetMessage(
                push_pb2.GetMessageRequest(message_id=scheduled.message_id), metadata=auth("order")
            )
            assert status.status == "delivered"

            # A kill switch set through A's admin API stops B within a second.
            async with aiohttp.ClientSession() as http:
                async with http.post(
                    f"http://{a_env['HERALD_ADMIN_LISTEN']}/admin/kill-switches",
                    json={"scope": "scenario", "value": "order.shipped", "reason": "cluster test", "actor": "sre"},
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                ) as created:
                    assert created.status == 201, await created.text()
                set_at = time.monotonic()
                n = 1000
                while True:
                    answer = await stubs[1].Push(shipped(n, n % users), metadata=auth("order"))
                    n += 1
                    if answer.outcome == types_pb2.SUPPRESSED:
                        break
                    assert time.monotonic() - set_at < 1.0, "gateway B still accepted a second after the switch"
                assert answer.reason == types_pb2.KILL_SWITCH
            await a.close()
            await b.close()

    # Every key on every master expires, but those keys.py says live on.
    assert keys_without_ttl(redis_cluster) == []


@dataclass
class Pusher:
    """Careful clients: each request is sent again (same request_id) until answered."""

    stub: push_pb2_grpc.PushServiceStub
    users: list[int]
    accepted: dict[str, float] = field(default_factory=dict)  # message id -> when answered
    errors: Counter[str] = field(default_factory=Counter)
    sent: int = 0

    async def run(self, stop: asyncio.Event, offset: int) -> None:
        n = 0
        while not stop.is_set():
            request = shipped(offset * 1_000_000 + n, self.users[(offset + n) % len(self.users)])
            while True:
                try:
                    answer = await self.stub.Push(request, metadata=auth("order"), timeout=5)
                    break
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), exc
                    self.errors[exc.code().name] += 1
                    await asyncio.sleep(0.1)
            assert answer.outcome == types_pb2.ACCEPTED, answer
            self.accepted[answer.message_id] = time.monotonic()
            n += 1
            await asyncio.sleep(0.02)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("wait_replicas", [0, 1])
async def test_a_master_killed_while_its_users_are_pushed(
    clean_cluster: str, redis_cluster: Cluster, tmp_path: Path, wait_replicas: int
) -> None:
    """Without WAIT, what a master acknowledged in its last moment may not have reached
    its replica (Redis's asynchronous replication): only what was accepted a second
    before the kill must be delivered. With HERALD_REDIS_WAIT_REPLICAS=1 every ACCEPTED
    was on the replica too: nothing accepted may be lost."""
    shard_tags = tags(DEFAULT_SHARDS)

    def key_of(user: int) -> str:
        return keys.user(shard_tags[shard_of(f"u-{user}", DEFAULT_SHARDS)], f"u-{user}")

    victim = redis_cluster.master_for_key(key_of(0))
    users = list(range(300))
    on_victim = [u for u in users if victim.owns(key_slot(key_of(u).encode()))]
    assert on_victim and len(on_victim) < len(users)
    async with fakes() as fake:
        # basic refuses while the store is away (fail_mode closed), so that the answers
        # show when the cluster serves again (fail-open is tried on a single node).
        policies = policies_for(tmp_path, fake, {"basic:\n    fail_mode: open": "basic:\n    fail_mode: closed"})
        env = environment(fake, clean_cluster, policies, tmp_path, "gw", HERALD_REDIS_WAIT_REPLICAS=str(wait_replicas))
        async with (
            herald("serve", env, tmp_path / "gw.log") as gateway,
            grpc.aio.insecure_channel(env["HERALD_LISTEN"]) as channel,
        ):
            await asyncio.wait_for(channel.channel_ready(), 30)
            await profile_pb2_grpc.ProfileServiceStub(channel).UpsertUsers(
                profile_pb2.UpsertUsersRequest(requests=[follower(i) for i in users]), metadata=auth("order")
            )
            stub = push_pb2_grpc.PushServiceStub(channel)
            stop = asyncio.Event()
            # Half the clients push the victim's users only, half everyone.
            pushers = [Pusher(stub, on_victim if k % 2 == 0 else users) for k in range(8)]
            running = [asyncio.create_task(p.run(stop, k)) for k, p in enumerate(pushers)]
            await asyncio.sleep(4)
            killed_at = redis_cluster.kill(victim)
            promoted, took = await asyncio.to_thread(redis_cluster.wait_for_failover, victim, 30)
            promoted_at = killed_at + took

            async def victim_users_answered_again() -> bool:
                return any(t > promoted_at for t in pushers[0].accepted.values())

            await wait_until(victim_users_answered_again, 30, "an ACCEPTED for the killed master's users")
            first_again = min(t for t in pushers[0].accepted.values() if t > promoted_at)
            await asyncio.sleep(3)
            stop.set()
            await asyncio.gather(*running)
            assert gateway.returncode is None  # the gateway stayed up

            accepted = {m: t for p in pushers for m, t in p.accepted.items()}
            well_before = {m for m, t in accepted.items() if t < killed_at - 1.0}

            async def delivered_all_well_before() -> bool:
                done = {d.split(".")[0] for d in fake.wechat.delivered_ids()}
                return well_before <= done

            await wait_until(delivered_all_well_before, 90, "every message accepted before the kill to be delivered")
            await asyncio.sleep(2)  # what else arrives
            done = {d.split(".")[0] for d in fake.wechat.delivered_ids()}
            lost = set(accepted) - done
            errors = sum((p.errors for p in pushers), Counter())
            print(
                f"\nfailover (HERALD_REDIS_WAIT_REPLICAS={wait_replicas}): master {victim.port} killed; replica {promoted.port} promoted after {took:.1f} s; "
                f"the killed master's users answered ACCEPTED again {first_again - promoted_at:.1f} s after the "
                f"promotion ({first_again - killed_at:.1f} s after the kill); {len(accepted)} accepted, "
                f"{len(well_before)} of them more than 1 s before the kill, all delivered; lost overall "
                f"{len(lost)}; errors retried {dict(errors)}; sent again and deduplicated {fake.wechat.repeats}"
            )
            assert first_again - promoted_at < 15
            if wait_replicas:
                assert lost == set()
