"""A real Redis Cluster for the tests: masters and replicas as local redis-server
processes, built with ``redis-cli --cluster create``.

``redis_cluster()`` starts it, waits until every slot is served and every replica is in
sync, yields a :class:`Cluster` and tears everything down on exit (processes killed,
directories removed), also when start-up or the test fails. Start-up polls and takes
about 3 s: ``redis-cli``'s own join wait, then the gossip that makes every node list
the replicas in CLUSTER SLOTS.

Each node gets two free ports: one for clients and one for the cluster bus
(``cluster-port``), so nothing depends on ``port + 10000`` being free or below 65536.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import redis
from redis.crc import key_slot

from tests.helpers import free_port

SLOTS = 16384
NODE_TIMEOUT_MS = 2000
HOST = "127.0.0.1"

MISSING = (
    "{binary} is not installed; the Redis Cluster tests need redis-server and redis-cli. "
    "Run the README's test command (scripts/test), which installs Debian's redis-server "
    "package (it brings redis-cli, from redis-tools), or apt-get install redis-server redis-tools"
)


class ClusterError(RuntimeError):
    """The cluster did not get where it was asked to go (start-up, failover, healing)."""


@dataclass
class Node:
    """One redis-server process of the cluster. ``role``, ``node_id``, ``master_id`` and
    ``slots`` are what the cluster said at the last :meth:`Cluster.refresh`."""

    port: int
    bus_port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    role: str = "?"  # "master" or "replica"
    node_id: str = ""
    master_id: str | None = None  # a replica's master
    slots: list[tuple[int, int]] = field(default_factory=list)  # inclusive ranges
    paused: bool = False
    killed_at: float | None = None  # time.monotonic() of the last kill() or pause()
    slots_when_stopped: list[tuple[int, int]] = field(default_factory=list)  # what it served then

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        """Running and not paused: it answers."""
        return self.proc is not None and self.proc.poll() is None and not self.paused

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def owns(self, slot: int) -> bool:
        return any(start <= slot <= end for start, end in self.slots)

    def client(self, **kwargs: object) -> redis.Redis:
        """A plain (non-cluster) client to this node alone; close it after use."""
        options: dict[str, object] = {"socket_timeout": 2, "socket_connect_timeout": 1, "decode_responses": True}
        options.update(kwargs)
        return redis.Redis(host=HOST, port=self.port, **options)  # type: ignore[arg-type]

    def log_tail(self, lines: int = 15) -> str:
        path = self.workdir / "redis.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __repr__(self) -> str:
        state = "alive" if self.alive else ("paused" if self.paused else "down")
        return f"Node({self.port}, {self.role}, pid={self.pid}, {state}, slots={self.slots})"


@dataclass
class Seen:
    """One line of CLUSTER NODES: a node as another node (or itself) sees it."""

    port: int
    flags: set[str]
    master: str | None
    link: str
    slots: list[tuple[int, int]]

    @property
    def serves_slots(self) -> bool:
        return "master" in self.flags and bool(self.slots)


def _parse_nodes(text: str) -> dict[str, Seen]:
    """CLUSTER NODES by node id."""
    nodes: dict[str, Seen] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        address = parts[1].split("@", 1)[0]
        slots = []
        for item in parts[8:]:
            if item.startswith("["):  # a slot being imported or migrated
                continue
            start, _, end = item.partition("-")
            slots.append((int(start), int(end or start)))
        nodes[parts[0]] = Seen(
            port=int(address.rsplit(":", 1)[1]) if ":" in address else 0,
            flags=set(parts[2].split(",")),
            master=None if parts[3] == "-" else parts[3],
            link=parts[7],
            slots=sorted(slots),
        )
    return nodes


def _info(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep:
            out[key] = value
    return out


def _poll(check: Callable[[], str | None], timeout: float, what: str) -> None:
    """Call ``check`` until it returns None (done); otherwise it says what is missing."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        try:
            missing = check()
        except (redis.RedisError, OSError) as exc:
            missing = f"{type(exc).__name__}: {exc}"
        if missing is None:
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout}s waiting for {what}: {missing}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)


class Cluster:
    def __init__(self, nodes: list[Node], masters: int, replicas_per_master: int, node_timeout_ms: int) -> None:
        self.nodes = nodes
        self.masters_wanted = masters
        self.replicas_per_master = replicas_per_master
        self.node_timeout_ms = node_timeout_ms

    # -- processes -------------------------------------------------------------------

    def _start(self, node: Node) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ClusterError(MISSING.format(binary="redis-server"))
        node.workdir.mkdir(parents=True, exist_ok=True)
        options = {
            "port": node.port,
            "cluster-port": node.bus_port,
            "bind": HOST,
            "cluster-enabled": "yes",
            "cluster-config-file": "nodes.conf",
            "cluster-node-timeout": self.node_timeout_ms,
            "appendonly": "no",
            "save": "",
            # a (re)joining replica syncs at once instead of after the default 5 s
            "repl-diskless-sync": "yes",
            "repl-diskless-sync-delay": 0,
            "dir": node.workdir,
            "daemonize": "no",
            "loglevel": "notice",
            "logfile": node.workdir / "redis.log",
        }
        args = [binary, *(arg for name, value in options.items() for arg in (f"--{name}", str(value)))]
        node.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        node.paused = False
        node.killed_at = None

        def answers() -> str | None:
            assert node.proc is not None
            if node.proc.poll() is not None:
                raise ClusterError(
                    f"redis-server on port {node.port} exited with {node.proc.returncode}:\n{node.log_tail()}"
                )
            with node.client() as r:
                r.ping()
            return None

        _poll(answers, 10, f"redis-server on port {node.port} to answer")

    def kill(self, node: Node) -> float:
        """SIGKILL: no goodbye to the cluster or the clients. Returns the monotonic time
        of the kill (also kept in ``node.killed_at``)."""
        assert node.proc is not None, f"{node} was never started"
        if node.alive:
            self.refresh()
            node.slots_when_stopped = list(node.slots)
        if node.paused:
            node.proc.send_signal(signal.SIGCONT)
            node.paused = False
        node.proc.kill()
        node.killed_at = time.monotonic()
        node.proc.wait(timeout=10)
        return node.killed_at

    def pause(self, node: Node) -> float:
        """SIGSTOP: the process hangs with its sockets open (a network partition or a
        stuck host as the clients see it: no refusal, no answer)."""
        assert node.proc is not None and node.alive, f"{node} is not running"
        self.refresh()
        node.slots_when_stopped = list(node.slots)
        node.proc.send_signal(signal.SIGSTOP)
        node.paused = True
        node.killed_at = time.monotonic()
        return node.killed_at

    def resume(self, node: Node) -> None:
        assert node.proc is not None
        node.proc.send_signal(signal.SIGCONT)
        node.paused = False

    def restart(self, node: Node, wait: bool = True) -> None:
        """Start a killed node again from its nodes.conf (same ports, same id, no data).
        A former master comes back as a replica of whoever took its slots. With ``wait``
        returns once the whole cluster is healthy again."""
        if node.proc is not None and node.proc.poll() is None:
            raise ClusterError(f"{node} is still running")
        self._start(node)
        if wait:
            self.wait_healthy()

    def heal(self, timeout: float = 30) -> None:
        """Resume paused nodes, restart dead ones, wait until healthy: puts the cluster
        back together after a test that broke it. Cheap when nothing is broken."""
        broken = False
        for node in self.nodes:
            if node.paused:
                self.resume(node)
                broken = True
            elif node.proc is None or node.proc.poll() is not None:
                self._start(node)
                broken = True
        if broken:
            self.wait_healthy(timeout)

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.kill()
        for node in self.nodes:
            if node.proc is not None:
                with suppress(subprocess.TimeoutExpired):
                    node.proc.wait(timeout=10)

    # -- topology --------------------------------------------------------------------

    def live_nodes(self) -> list[Node]:
        return [node for node in self.nodes if node.alive]

    def _view(self) -> dict[str, Seen]:
        """CLUSTER NODES as one live node sees it."""
        last: Exception | None = None
        for node in self.live_nodes():
            try:
                with node.client() as r:
                    return _parse_nodes(r.execute_command("CLUSTER", "NODES"))
            except (redis.RedisError, OSError) as exc:
                last = exc
        raise ClusterError(f"no live node answered CLUSTER NODES ({last})")

    def refresh(self) -> None:
        """Roles, ids and slots of every node from the cluster's own view."""
        by_port = {node.port: node for node in self.nodes}
        for node_id, seen in self._view().items():
            node = by_port.get(seen.port)
            if node is None:
                continue
            node.node_id = node_id
            node.role = "master" if "master" in seen.flags else "replica"
            node.master_id = seen.master
            node.slots = list(seen.slots)

    @property
    def masters(self) -> list[Node]:
        """Live masters that serve slots, by their first slot."""
        self.refresh()
        found = [node for node in self.nodes if node.role == "master" and node.slots and node.alive]
        return sorted(found, key=lambda node: node.slots[0][0])

    @property
    def replicas(self) -> list[Node]:
        self.refresh()
        return [node for node in self.nodes if node.role == "replica" and node.alive]

    def replicas_of(self, master: Node) -> list[Node]:
        self.refresh()
        return [node for node in self.nodes if node.master_id == master.node_id and node.alive]

    @property
    def seed_url(self) -> str:
        return f"redis://{HOST}:{self.masters[0].port}"

    def master_for_slot(self, slot: int) -> Node:
        for node in self.masters:
            if node.owns(slot):
                return node
        raise ClusterError(f"no live master serves slot {slot}")

    def master_for_key(self, key: str | bytes) -> Node:
        return self.master_for_slot(key_slot(key.encode() if isinstance(key, str) else key))

    def keys_on(self, master: Node, count: int, prefix: str = "k") -> list[str]:
        """``count`` keys in distinct hash slots that ``master`` serves: ``prefix{tag}``."""
        keys, tag = [], 0
        while len(keys) < count:
            key = f"{prefix}{{{tag}}}"
            if master.owns(key_slot(key.encode())):
                keys.append(key)
            tag += 1
        return keys

    # -- health ----------------------------------------------------------------------

    def _unhealthy(self, replicas_listed: bool = True) -> str | None:
        """None when every node runs, every slot is served, every node agrees on who is
        who, and every replica is attached to its master and in sync; else what is not.

        With ``replicas_listed`` every node's CLUSTER SLOTS must also name the replicas,
        which is what clients discover them from: Redis 7 leaves out a replica whose
        replication offset, as gossiped, is still 0 (no write replicated yet)."""
        total = len(self.nodes)
        if any(not node.alive for node in self.nodes):
            return "a node is down: " + ", ".join(repr(n) for n in self.nodes if not n.alive)
        for node in self.nodes:
            with node.client() as r:
                info = _info(r.execute_command("CLUSTER", "INFO"))
                if info.get("cluster_state") != "ok":
                    return f"{node.address} cluster_state:{info.get('cluster_state')}"
                if info.get("cluster_slots_assigned") != str(SLOTS) or info.get("cluster_slots_ok") != str(SLOTS):
                    return f"{node.address} slots assigned {info.get('cluster_slots_assigned')}, ok {info.get('cluster_slots_ok')}"
                if info.get("cluster_known_nodes") != str(total):
                    return f"{node.address} knows {info.get('cluster_known_nodes')} of {total} nodes"
                view = _parse_nodes(r.execute_command("CLUSTER", "NODES"))
                ranges = r.execute_command("CLUSTER", "SLOTS")
            if replicas_listed:
                short = [f"{entry[0]}-{entry[1]}" for entry in ranges if len(entry) - 3 != self.replicas_per_master]
                if short:
                    return f"{node.address}'s CLUSTER SLOTS lists no replica for slots {short}"
            troubled = {"fail", "fail?", "handshake", "noaddr"}
            bad = [
                f"{v.port}:{','.join(sorted(v.flags))}"
                for v in view.values()
                if v.flags & troubled or v.link != "connected"
            ]
            if bad:
                return f"{node.address} sees {bad}"
            masters = [node_id for node_id, v in view.items() if v.serves_slots]
            if len(masters) != self.masters_wanted:
                return f"{node.address} sees {len(masters)} masters with slots"
            for master_id in masters:
                replicas = [v for v in view.values() if v.master == master_id]
                if len(replicas) != self.replicas_per_master:
                    return f"{node.address} sees {len(replicas)} replicas of {master_id[:8]}"
        self.refresh()
        for node in self.nodes:
            if node.role != "replica":
                continue
            with node.client() as r:
                repl = r.info("replication")
            master = next((m for m in self.nodes if m.node_id == node.master_id), None)
            if repl.get("role") != "slave" or master is None or repl.get("master_port") != master.port:
                return f"replica {node.port} role {repl.get('role')} of {repl.get('master_port')}"
            if repl.get("master_link_status") != "up" or repl.get("master_sync_in_progress") != 0:
                return f"replica {node.port} link {repl.get('master_link_status')}, sync {repl.get('master_sync_in_progress')}"
            with master.client() as r:
                mrepl = r.info("replication")
            states = [
                v
                for k, v in mrepl.items()
                if k.startswith("slave") and isinstance(v, dict) and v.get("port") == node.port
            ]
            if not states or states[0].get("state") != "online":
                return f"master {master.port} does not list replica {node.port} online: {states}"
        return None

    def wait_healthy(self, timeout: float = 30, replicas_listed: bool = True) -> None:
        _poll(lambda: self._unhealthy(replicas_listed), timeout, "the cluster to be healthy")

    def wait_for_failover(self, old_master: Node, timeout: float = 30) -> tuple[Node, float]:
        """Wait until a replica of ``old_master`` (killed or paused) serves its slots and
        every live node says cluster_state:ok. Returns the new master and the seconds
        since the kill/pause."""
        assert old_master.killed_at is not None, "kill() or pause() the master first"
        slots = list(old_master.slots_when_stopped)
        assert slots, f"{old_master} served no slots when it was stopped"
        found: list[Node] = []

        def promoted() -> str | None:
            view = self._view()
            by_port = {node.port: node for node in self.nodes}
            owner = next((v for v in view.values() if v.serves_slots and v.slots == slots), None)
            if owner is None or owner.port == old_master.port:
                return "the old master's slots have no new owner yet"
            for node in self.live_nodes():
                with node.client() as r:
                    state = _info(r.execute_command("CLUSTER", "INFO")).get("cluster_state")
                if state != "ok":
                    return f"{node.address} cluster_state:{state}"
            found.append(by_port[owner.port])
            return None

        _poll(promoted, timeout, f"a replica of {old_master.address} to take over")
        took = time.monotonic() - old_master.killed_at
        self.refresh()
        return found[0], took

    # -- data ------------------------------------------------------------------------

    def flushall(self) -> None:
        """FLUSHALL on every master, and wait until its replicas have it too."""
        for master in self.masters:
            with master.client() as r:
                r.flushall()
                r.execute_command("WAIT", self.replicas_per_master, 2000)


@contextmanager
def redis_cluster(
    masters: int = 3, replicas_per_master: int = 1, node_timeout_ms: int = NODE_TIMEOUT_MS
) -> Iterator[Cluster]:
    """A healthy Redis Cluster of ``masters * (1 + replicas_per_master)`` local nodes."""
    for binary in ("redis-server", "redis-cli"):
        if shutil.which(binary) is None:
            raise ClusterError(MISSING.format(binary=binary))
    if masters < 3:
        raise ValueError("redis-cli --cluster create needs at least 3 masters")
    count = masters * (1 + replicas_per_master)
    ports: list[int] = []
    while len(ports) < 2 * count:  # distinct: a client port and a bus port per node
        port = free_port()
        if port not in ports:
            ports.append(port)
    root = Path(tempfile.mkdtemp(prefix="herald-cluster-"))
    nodes = [Node(ports[2 * i], ports[2 * i + 1], root / f"node-{ports[2 * i]}") for i in range(count)]
    cluster = Cluster(nodes, masters, replicas_per_master, node_timeout_ms)
    try:
        for node in nodes:
            cluster._start(node)
        create = subprocess.run(
            [
                *("redis-cli", "--cluster", "create", *(node.address for node in nodes)),
                *("--cluster-replicas", str(replicas_per_master), "--cluster-yes"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "NO_COLOR": "1"},
        )
        if create.returncode != 0:
            raise ClusterError(
                f"redis-cli --cluster create failed ({create.returncode}):\n{create.stdout}{create.stderr}"
            )
        try:
            cluster.wait_healthy(30, replicas_listed=False)
            # A first replicated write, so that CLUSTER SLOTS names the replicas too.
            cluster.flushall()
            cluster.wait_healthy(30)
        except ClusterError as exc:
            logs = "\n".join(f"--- {node.port}:\n{node.log_tail(5)}" for node in nodes)
            raise ClusterError(f"{exc}\n{logs}") from None
        cluster.refresh()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
