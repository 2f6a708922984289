"""The local spool: where a decision made without the store (fail-open) is kept, on
this machine's disk, until the store is back (docs/guarantees.md: fail-open never means
fire and forget).

Each entry (the message record and, when accepted, its job) is appended and fsynced
before the caller is answered. ``drain`` hands the entries to the store and the queue
when the store answers again: each one is committed with an idempotency key of its own
message id, so an entry handed over twice (a crash between the hand-over and the
truncation of the file) is queued once. The file survives restarts; a gateway started
with a non-empty spool drains it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.errors import HeraldError
from gateway.logs import get_logger
from gateway.store import codec
from gateway.store.base import Change, IdemKey, Lifetimes, NewMessage, Store
from gateway.store.codec import Spooled
from gateway.values.decisions import PushAnswer

log = get_logger(__name__)
_LENGTH = struct.Struct(">I")
BATCH = 500


class Spool:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "spool.log"
        self._lock = asyncio.Lock()
        self._count: int | None = None

    def _read(self, upto: int | None = None) -> tuple[list[Spooled], int]:
        """The entries in the file (up to byte ``upto``) and where the last whole one
        ends; a torn last entry (a crash mid-write) is left out."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return [], 0
        if upto is not None:
            data = data[:upto]
        entries, at = [], 0
        while at + _LENGTH.size <= len(data):
            (size,) = _LENGTH.unpack_from(data, at)
            end = at + _LENGTH.size + size
            if end > len(data):
                break
            try:
                entries.append(codec.SPOOLED.decode(data[at + _LENGTH.size : end]))
            except codec.Undecodable as exc:
                log.error("spool_entry_undecodable", error=str(exc), offset=at)
            at = end
        return entries, at

    def _append_sync(self, blob: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as out:
            out.write(blob)
            out.flush()
            os.fsync(out.fileno())

    async def append(self, entries: Sequence[Spooled]) -> None:
        """Keep ``entries`` durably (fsynced) before returning."""
        blob = b"".join(_LENGTH.pack(len(raw)) + raw for raw in (codec.SPOOLED.encode(e) for e in entries))
        async with self._lock:
            await asyncio.to_thread(self._append_sync, blob)
            if self._count is not None:
                self._count += len(entries)

    def count(self) -> int:
        if self._count is None:
            self._count = len(self._read()[0])
        return self._count

    async def drain(self, store: Store, lifetimes: Lifetimes) -> int:
        """Hand what is spooled to the store; how many entries went. Raises the store's
        error when it does not answer (the entries stay)."""
        async with self._lock:
            entries, end = await asyncio.to_thread(self._read)
            if not entries:
                return 0
            for start in range(0, len(entries), BATCH):
                await store.commit([_change(e) for e in entries[start : start + BATCH]], lifetimes)
            await asyncio.to_thread(self._cut, end)
            self._count = None
        log.info("spool_drained", entries=len(entries), detail="handed to the store and the delivery queue")
        return len(entries)

    def _cut(self, end: int) -> None:
        """Drop the first ``end`` bytes (what was handed over), keeping later appends."""
        rest = self.path.read_bytes()[end:]
        temp = self.path.with_suffix(".tmp")
        temp.write_bytes(rest)
        with temp.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temp, self.path)


def _change(entry: Spooled) -> Change:
    record = entry.record
    # The message id is the idempotency key of the hand-over: handed over twice, queued once.
    idem = IdemKey("spool", record.message_id, record.message_id)
    answer = PushAnswer(
        record.message_id,
        record.category,
        record.outcome,
        record.reason,
        record.detail,
        record.channel_plan,
        record.scheduled_at,
        record.policy_version,
    )
    return Change(record.user_id, 0, None, (NewMessage(record, idem, answer, entry.job),))


async def drain_forever(
    spool: Spool, store: Store, lifetimes: Callable[[], Lifetimes], stopping: asyncio.Event
) -> None:
    """Try to hand the spool over every second while it holds something."""
    while not stopping.is_set():
        if spool.count():
            try:
                await spool.drain(store, lifetimes())
            except HeraldError as exc:
                log.debug("spool_waits_for_store", error=exc.message, entries=spool.count())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), 1.0)
