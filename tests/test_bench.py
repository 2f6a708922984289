"""The benchmark scripts still run end to end: smoke tests on tiny workloads, not speed checks."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from google.protobuf.timestamp_pb2 import Timestamp

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(90)
def test_compare_runs_and_prints_a_line_per_target() -> None:
    command = [
        sys.executable,
        str(ROOT / "bench" / "compare.py"),
        "--targets", "echo,herald-memory",
        "--requests", "200",
        "--warmup", "50",
        "--users", "500",
        "--rate", "50",
        "--duration", "1",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=80, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "$ " in out.splitlines()[0] and "compare.py" in out.splitlines()[0]
    assert re.search(r"^machine: \d+ cores", out, re.M)
    # The closed-loop table: a figure for each target, the ceiling's ratio for Herald.
    assert re.search(r"^echo +[\d,]+ calls/s", out, re.M), out
    assert re.search(r"^herald-memory +[\d,]+ calls/s .* echo +\d+% ", out, re.M), out
    # The fixed-rate block: a line per unary target, 50 calls/s offered.
    block = out[out.index("Fixed rate:") :]
    for target in ("echo", "herald-memory"):
        assert re.search(rf"^{target} +50 +[\d,]+ ", block, re.M), block


@pytest.mark.cluster
@pytest.mark.timeout(150)
def test_compare_runs_the_cluster_targets_and_prints_each_masters_share() -> None:
    """compare.py starts its own Redis Cluster (a few seconds) and reads each master."""
    targets = ("herald-cluster-api", "herald-cluster", "herald-cluster-api-batch")
    command = [
        sys.executable,
        str(ROOT / "bench" / "compare.py"),
        "--targets", ",".join(targets),
        "--requests", "100",
        "--warmup", "20",
        "--users", "200",
        "--batch", "50",
        "--rate", "20",
        "--duration", "0.5",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=140, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    # Each cluster target in the closed-loop and Redis tables, read against its single-node twin's ceiling.
    for target, ceiling in zip(targets, ("echo-redis", "echo-redis", "echo-redis-batch"), strict=True):
        assert re.search(rf"^{target}( \(\d proc\))? +[\d,]+ (calls|decisions)/s .* {ceiling} ", out, re.M), out
    redis = out[out.index("Redis, per decision") : out.index("Redis Cluster, per master")]
    for target in targets:
        assert re.search(rf"^{target}( \(\d proc\))? +100 ", redis, re.M), redis
    # The per-master section: a line per cluster target naming three masters, no more.
    section = out[out.index("Redis Cluster, per master") : out.index("Fixed rate:")]
    share = r"master {}: \d+% of commands, [\d,]+ µs/decision"
    for target in targets:
        line = re.search(rf"^{target}( \(\d proc\))? +(.*)$", section, re.M)
        assert line, section
        assert re.search("; ".join(share.format(i) for i in (1, 2, 3)) + "; replicas: ", line[2]), line[0]
        assert "master 4" not in line[2]
    # The fixed-rate phase runs on the unary cluster targets only.
    block = out[out.index("Fixed rate:") :]
    assert re.search(r"^herald-cluster-api( \(\d proc\))? +20 ", block, re.M), block
    assert re.search(r"^herald-cluster( \(\d proc\))? +20 ", block, re.M), block
    assert "herald-cluster-api-batch" not in block


@pytest.mark.redis
@pytest.mark.timeout(120)
def test_campaign_bench_runs_and_prints_its_rows() -> None:
    """bench/campaign_bench.py on a tiny workload: its own redis-server, `herald serve`,
    a campaign to COMPLETED, the ceiling. The table has every row; no speed is checked."""
    command = [sys.executable, str(ROOT / "bench" / "campaign_bench.py"), "--users", "3000", "--progress-every", "1"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=110, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert out.startswith("$ ") and "campaign_bench.py --users 3000" in out.splitlines()[0]
    assert re.search(r"^machine: \d+ cores .* load average [\d.]+ [\d.]+ [\d.]+ at start", out, re.M), out
    assert "--save '' --appendonly no" in out
    # 3,000 users: 60% tagged d11, half of those in 浙江.
    figures = {
        "users in the store": r"3,000",
        "users in the audience": r"900",
        "index entries scanned": r"1,800",
        "decided \\(funnel targeted\\)": r"900",
        "wall time, start → COMPLETED": r"[\d.]+ s",
        "users decided per second": r"[\d,]+",
        "gateway peak RSS": r"[\d,]+ MiB",
        "redis used_memory_peak": r"[\d,]+ MiB",
        "redis commands per decided": r"[\d.]+",
        "CPU per decided": r"[\d,]+ µs",
        "ceiling, decided per second": r"[\d,]+",
        "herald of ceiling": r"\d+%",
        "load": r"[\d.]+",
    }
    for name, value in figures.items():
        assert re.search(rf"^{name} +{value}(  |$)", out, re.M), (name, out)
    assert "scheduled 900, accepted 0, suppressed 0" in out  # held in the users' pools
    assert re.search(r"COMPLETED: scanned 1,800 of 1,800  decided 900 ", done.stderr), done.stderr  # progress


def test_campaign_bench_users_are_what_upsert_user_hands_the_store() -> None:
    """The bench's profile sections for a user are those ProfileService's UpsertUser
    (no update mask) gives the store for the same user."""
    from bench import campaign_bench as bench
    from gateway.api.convert import profile_patch
    from herald.v1 import profile_pb2

    bought = datetime(2026, 11, 6, 2, 0, tzinfo=UTC)
    stamp = Timestamp()
    stamp.FromDatetime(bought)
    for n in (0, 1, 2, 3, 7, 14, 35):
        user = profile_pb2.User(
            user_id=bench.user_id(n),
            phone=f"+86139{n:08d}",
            timezone="Asia/Shanghai",
            tags=list(bench.user_tags(n)),
            attributes={"province": "浙江" if n % 2 == 0 else "江苏"},
            device_tokens=[
                profile_pb2.DeviceToken(token=f"tok-{n}", platform=profile_pb2.ANDROID, provider=profile_pb2.FCM)
            ],
            rfm=profile_pb2.RfmInputs(last_purchase_at=stamp, orders_in_period=6, spend_in_period_minor=300_000),
        )
        assert bench.user_patch(n, bought) == profile_patch(profile_pb2.UpsertUserRequest(user=user)), n


@pytest.mark.redis
async def test_campaign_bench_loads_what_redis_store_upsert_user_writes(clean_redis: str) -> None:
    """Users loaded by the bench's pipelines are, key for key and field for field, the
    users RedisStore.upsert_user writes (profile hashes with their TTL, and the audience
    indexes)."""
    from bench import campaign_bench as bench
    from gateway.store.redis import RedisStore

    now = datetime(2026, 11, 11, 2, 0, tzinfo=UTC)
    ttl = timedelta(days=400)
    client = redis.Redis.from_url(clean_redis)

    def contents() -> dict[bytes, object]:
        found: dict[bytes, object] = {}
        for key in client.scan_iter(count=1000):
            kind = client.type(key)
            if kind == b"hash":
                assert 0 < client.pttl(key) <= ttl.total_seconds() * 1000, key
                found[key] = client.hgetall(key)
            elif kind == b"set":
                found[key] = client.smembers(key)
            else:
                found[key] = kind
        return found

    users = 60
    await bench.load_users(clean_redis, users, 16, now, ttl)
    loaded = contents()
    client.flushall()
    store = RedisStore(clean_redis)
    try:
        bought = now.replace(microsecond=0) - timedelta(days=5)
        for n in range(users):
            await store.upsert_user(bench.user_id(n), bench.user_patch(n, bought), now, ttl)
    finally:
        await store.close()
    assert loaded == contents()
    assert any(b":tg:d11" in key for key in loaded) and any(b":tg:vip" in key for key in loaded)
