"""The connection to Redis (one node, or a cluster): the client, the one place where
the client's errors become ``StoreUnavailable``, the Lua scripts, and the coalescing
of concurrent calls into shared pipelines.

Every store call is a list of commands. Calls made in the same turn of the event loop
(the decisions of many concurrent Push calls, a PushBatch's users) go to Redis in one
pipeline, one round trip for all of them; a cluster client splits the pipeline per node
and sends the parts at once. Scripts run as EVALSHA; a node that does not know a script
(a fresh or promoted node) gets it loaded and the command is sent again. No
``SCRIPT EXISTS`` on the way.

With ``wait_replicas`` (``HERALD_REDIS_WAIT_REPLICAS``), a pipeline that carries a
durable call (a decision's commit: its answer and delivery job) ends with ``WAIT`` on
each node it wrote to, on the same connection, so the call returns once that many
replicas have the writes, or the timeout passed (counted: the writes stand, the window
of Redis's asynchronous replication was not closed for them).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import NoScriptError, RedisError, ResponseError

from gateway.errors import StoreUnavailable
from gateway.masking import redacted_url
from gateway.store.redis.resp import RespPool

Command = tuple[Any, ...]
# Pipelines in flight at once; calls made meanwhile wait and share the next one.
MAX_FLUSHES = 4
MAX_BATCH = 2000
# After Redis failed to answer, calls fail at once for this long instead of each waiting
# out its own timeout (the fail-open path answers in milliseconds, not seconds); then
# the next calls try again.
DOWN_HOLD = 1.0


redacted = redacted_url  # the URL without its password, for logs and errors


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())

    def call(self, keys: Sequence[Any], args: Sequence[Any]) -> Command:
        return ("EVALSHA", self.sha, len(keys), *keys, *args)


def client(url: str, cluster: bool, *, timeout: float, max_connections: int) -> Any:
    """A redis-py asyncio client for ``url``: a cluster client (which discovers the
    other nodes from the one named) or a single-node one. Connection faults are retried
    once by the client; Herald's scripts are safe to run twice."""
    retry = Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 1)
    if cluster:
        return RedisCluster.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            max_connections=max_connections,
            # Moved slots, a node down, a failover in progress: tried again (with the
            # slot map refreshed) a few times over about a second; past that the call
            # is StoreUnavailable and the next ones try afresh.
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), 3),
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        # Waiting for a free connection under load is not an outage.
        timeout=max(10.0, timeout * 5),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
        retry=retry,
    )
    return aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes it


@dataclass
class _Call:
    op: str
    commands: Sequence[Command]
    future: asyncio.Future[list[Any]]
    # True: a refused command's error is its reply, for the caller to look at.
    errors: bool = False
    # True: waits for the replicas (when the connection is set to).
    durable: bool = False


@dataclass(frozen=True)
class Wait:
    """WAIT for ``replicas`` replicas, at most ``timeout_ms``, after durable writes."""

    replicas: int
    timeout_ms: int


def first_key(command: Command) -> Any:
    """The key a command is routed by: EVALSHA's first key, else the first argument."""
    if str(command[0]).upper() == "EVALSHA":
        return command[3]
    return command[1]


class Connection:
    """One client and the pipelines that carry every store call."""

    def __init__(
        self,
        url: str,
        *,
        cluster: bool = False,
        timeout: float = 2.0,
        max_connections: int = 128,
        scripts: Sequence[Script] = (),
        on_round_trip: Callable[[str], None] = lambda op: None,
        wait: Wait | None = None,
        on_wait_short: Callable[[int], None] = lambda short: None,
    ) -> None:
        self.url = url  # with its password: for more connections, never shown (``where`` is)
        self.where = redacted(url)
        self.cluster = cluster
        self.timeout = timeout  # seconds a command may take to answer
        # redis-py: the cluster's routing, and pub/sub; on one node the pipelines go
        # through the lean client (``resp``).
        self.client: Any = client(url, cluster, timeout=timeout, max_connections=max_connections)
        self._lean = None if cluster else RespPool(url, timeout=timeout)
        self._scripts = {s.sha: s for s in scripts}
        self._on_round_trip = on_round_trip
        self._waiting: list[_Call] = []
        self._flushes = 0
        self._scheduled = False
        self._down_until = 0.0
        self._down_error: StoreUnavailable | None = None
        self._wait = wait if wait is not None and wait.replicas > 0 else None
        self._on_wait_short = on_wait_short

    def _unreachable(self, exc: Exception) -> bool:
        """Whether ``exc`` from the client means Redis could not be reached. On a
        cluster, anything: while a master fails over, redis-py's cluster client can
        raise more than its own errors (an AttributeError from a connection it had just
        dropped), and a store call must end as StoreUnavailable, not crash."""
        return self.cluster or isinstance(exc, RedisError | OSError)

    def unavailable(self, exc: BaseException, what: str = "state store") -> StoreUnavailable:
        return StoreUnavailable(
            f"{what} {self.where} did not answer ({type(exc).__name__}); check that Redis is up and reachable"
        )

    async def run(
        self, op: str, commands: Sequence[Command], *, errors: bool = False, durable: bool = False
    ) -> list[Any]:
        """Send ``commands`` (in the next shared pipeline); their replies, in order. A
        command that Redis refuses raises ``StoreUnavailable`` naming it (with
        ``errors``, its ``ResponseError`` is its reply instead). ``durable``: returns
        once the replicas have the writes too, when the connection waits for them."""
        if not commands:
            return []
        if self._down_error is not None and time.monotonic() < self._down_until:
            raise self._down_error
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Call(op, commands, future, errors, durable))
        self._schedule()
        return await future

    def _schedule(self) -> None:
        if self._scheduled or self._flushes >= MAX_FLUSHES or not self._waiting:
            return
        self._scheduled = True
        asyncio.get_running_loop().call_soon(self._start_flush)

    def _start_flush(self) -> None:
        self._scheduled = False
        if not self._waiting or self._flushes >= MAX_FLUSHES:
            return
        batch: list[_Call] = []
        size = 0
        while self._waiting and (not batch or size + len(self._waiting[0].commands) <= MAX_BATCH):
            call = self._waiting.pop(0)
            batch.append(call)
            size += len(call.commands)
        self._flushes += 1
        task = asyncio.get_running_loop().create_task(self._flush(batch))
        task.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._flushes -= 1
        self._schedule()

    async def _flush(self, batch: list[_Call]) -> None:
        ops = {call.op for call in batch}
        self._on_round_trip(ops.pop() if len(ops) == 1 else "mixed")
        commands = [command for call in batch for command in call.commands]
        waits = self._waits_for(batch)
        try:
            replies = await self._execute(commands, waits)
        except asyncio.CancelledError:
            for call in batch:
                if not call.future.done():
                    call.future.cancel()
            raise
        except Exception as exc:
            if not self._unreachable(exc):
                # A fault of ours, not the store's: the callers get it, none waits forever.
                for call in batch:
                    if not call.future.done():
                        call.future.set_exception(exc)
                return
            error = self.unavailable(exc)
            self._down_error, self._down_until = error, time.monotonic() + DOWN_HOLD
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(error)
            return
        at = 0
        for call in batch:
            part = replies[at : at + len(call.commands)]
            at += len(call.commands)
            if call.future.done():
                continue
            failed = next(
                (r for r in part if isinstance(r, Exception) and not (call.errors and isinstance(r, ResponseError))),
                None,
            )
            if failed is not None:
                call.future.set_exception(
                    StoreUnavailable(f"state store {self.where} refused {call.op} ({type(failed).__name__}: {failed})")
                )
            else:
                call.future.set_result(part)

    def _waits_for(self, batch: Sequence[_Call]) -> list[Command]:
        """The WAIT commands that end a pipeline carrying durable calls: one on each node
        they write to (a single node: one)."""
        if self._wait is None or not any(call.durable for call in batch):
            return []
        wait = ("WAIT", self._wait.replicas, self._wait.timeout_ms)
        if not self.cluster:
            return [wait]
        nodes: dict[str, Any] = {}
        for call in batch:
            if call.durable:
                for command in call.commands:
                    node = self._node_of(command)
                    if node is not None:  # none: no slot map yet, the write itself will say
                        nodes[node.name] = node
        return [(*wait, {"target_nodes": node}) for node in nodes.values()]

    async def _execute(self, commands: Sequence[Command], waits: Sequence[Command] = ()) -> list[Any]:
        replies = await self._pipeline([*commands, *waits])
        self._check_waits(replies[len(commands) :])
        replies = replies[: len(commands)]
        missing = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        if missing:
            # A node that restarted or was promoted does not know our scripts yet.
            for sha in {commands[i][1] for i in missing}:
                await self._script_load(self._scripts[sha].source)
            again = await self._pipeline([*(commands[i] for i in missing), *waits])
            self._check_waits(again[len(missing) :])
            for index, reply in zip(missing, again, strict=True):
                replies[index] = reply
        return replies

    def _node_of(self, command: Command) -> Any:
        """The cluster node serving ``command``'s key (first_key), or None before the
        client knows the slots."""
        try:
            return self.client.get_node_from_key(first_key(command))
        except Exception:
            return None

    def _check_waits(self, acked: Sequence[Any]) -> None:
        if self._wait is None or not acked:
            return
        wanted = self._wait.replicas
        short = len([n for n in acked if isinstance(n, Exception) or int(n) < wanted])
        if short:
            self._on_wait_short(short)

    async def _pipeline(self, commands: Sequence[Command]) -> list[Any]:
        if self._lean is not None:
            return await self._lean.execute(commands)
        pipe = self.client.pipeline(transaction=False)
        try:
            for command in commands:
                if command and isinstance(command[-1], dict):  # options for the reply's parser
                    pipe.execute_command(*command[:-1], **command[-1])
                else:
                    pipe.execute_command(*command)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
            return replies
        finally:
            reset = pipe.reset()
            if asyncio.iscoroutine(reset):
                await reset

    def count_round_trip(self, op: str) -> None:
        self._on_round_trip(op)

    async def direct(self, op: str, command: Command) -> Any:
        """One command on its own, not in a shared pipeline (a ping)."""
        self._on_round_trip(op)
        try:
            if self._lean is not None:
                [reply] = await self._lean.execute([command])
                if isinstance(reply, ResponseError):
                    raise reply
                return reply
            return await self.client.execute_command(*command)
        except ResponseError as exc:
            raise StoreUnavailable(f"state store {self.where} refused {op} ({exc})") from exc
        except Exception as exc:
            if not self._unreachable(exc):
                raise
            raise self.unavailable(exc) from exc

    async def load_scripts(self) -> None:
        try:
            for script in self._scripts.values():
                await self._script_load(script.source)
        except Exception as exc:
            if not self._unreachable(exc):
                raise
            raise self.unavailable(exc) from exc

    async def _script_load(self, source: str) -> None:
        if self._lean is not None:
            [reply] = await self._lean.execute([("SCRIPT", "LOAD", source)])
            if isinstance(reply, ResponseError):
                raise reply
            return
        await self.client.script_load(source)

    async def close(self) -> None:
        if self._lean is not None:
            await self._lean.close()
        await self.client.aclose()
        if self.cluster:
            # aclose() skips the node connections while the client means to rediscover
            # the cluster (after a failed call): close them too, and the seeds'.
            await self.client.nodes_manager.aclose()
            await self.client.nodes_manager.aclose("startup_nodes")
