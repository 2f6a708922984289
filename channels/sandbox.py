"""The sandbox: deliveries written to ``<data dir>/outbox/<CHANNEL>.jsonl`` instead of
a provider, so a newcomer sees exactly what would have gone out. Used for every
channel whose provider has no credentials configured."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

from channels.base import Delivery, SendResult, SendStatus
from gateway.domain import Channel
from gateway.masking import mask_email, mask_phone, mask_token


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
        self._lock = asyncio.Lock()

    def path_for(self, channel: Channel) -> Path:
        return self._dir / f"{channel}.jsonl"

    async def send(self, delivery: Delivery) -> SendResult:
        line = json.dumps(
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
            ensure_ascii=False,
        )
        path = self.path_for(delivery.channel)
        async with self._lock:
            await asyncio.to_thread(self._append, path, line)
        return SendResult(SendStatus.DELIVERED, "SANDBOX", f"written to {path}")

    @staticmethod
    def _append(path: Path, line: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as out:
            out.write(line + "\n")

    async def close(self) -> None:
        return None
