"""The sandbox: deliveries written to ``<data dir>/outbox/<CHANNEL>.jsonl`` instead of
a provider, so a newcomer sees exactly what would have gone out. Used for every
channel whose provider has no credentials configured."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import orjson

from channels.base import Delivery, SendResult, SendStatus
from gateway.masking import mask_email, mask_phone, mask_token
from gateway.values.domain import Channel


def masked_recipient(channel: Channel, recipient: str) -> str:
    if channel is Channel.SMS:
        return mask_phone(recipient)
    if channel is Channel.EMAIL:
        return mask_email(recipient)
    return mask_token(recipient)


class SandboxAdapter:
    name = "sandbox"

    def __init__(self, outbox_dir: Path) -> None:
        self._dir = outbox_dir
        self._files: dict[Channel, BinaryIO] = {}
        self._details: dict[Channel, str] = {}
        self._flush: asyncio.Handle | None = None

    def path_for(self, channel: Channel) -> Path:
        return self._dir / f"{channel}.jsonl"

    def _flush_all(self) -> None:
        self._flush = None
        for out in self._files.values():
            out.flush()

    async def send(self, delivery: Delivery) -> SendResult:
        line = orjson.dumps(
            {
                "at": datetime.now(UTC).isoformat(),
                "delivery_id": delivery.delivery_id,
                "message_id": delivery.message_id,
                "channel": str(delivery.channel),
                "category": str(delivery.category),
                "scenario": delivery.scenario,
                "user_id": delivery.user_id,
                "recipient": masked_recipient(delivery.channel, delivery.recipient),
                "payload": delivery.payload,
            },
            option=orjson.OPT_APPEND_NEWLINE,
        )
        # One short append to a local file: cheaper in the loop than a thread hop.
        out = self._files.get(delivery.channel)
        if out is None:
            self._dir.mkdir(parents=True, exist_ok=True)
            out = self._files[delivery.channel] = self.path_for(delivery.channel).open("ab")
            self._details[delivery.channel] = f"written to {self.path_for(delivery.channel)}"
        out.write(line)
        if self._flush is None:  # one flush a turn of the event loop, for every line written in it
            self._flush = asyncio.get_running_loop().call_soon(self._flush_all)
        return SendResult(SendStatus.DELIVERED, "SANDBOX", self._details[delivery.channel])

    async def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        for out in self._files.values():
            out.close()
        self._files.clear()
