"""Writes examples/traffic-day.jsonl: one Double 11 day of traffic for 40 users.

.venv/bin/python examples/make_traffic.py
.venv/bin/herald policy simulate --policies policies --traffic examples/traffic-day.jsonl
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

CST = timezone(timedelta(hours=8))
DAY = datetime(2026, 11, 11, tzinfo=CST)
ZONES = ["Asia/Shanghai"] * 6 + ["Asia/Urumqi", "Europe/Berlin", "America/Los_Angeles"]


def main() -> None:
    rng = random.Random(11)
    lines = []
    for i in range(40):
        purchase = DAY - timedelta(days=rng.choice([2, 5, 12, 25, 60, 200]))
        user = {
            "userId": f"u-{i:03d}",
            "wechat": {"openid": f"oTraffic{i:020d}", "following": rng.random() < 0.85},
            "phone": f"+86139{i:08d}",
            "deviceTokens": [{"token": f"tok-{i}", "platform": "ANDROID", "provider": "FCM"}] if i % 3 else [],
            "timezone": rng.choice(ZONES),
            "rfm": {
                "lastPurchaseAt": purchase.isoformat(),
                "ordersInPeriod": rng.randint(0, 9),
                "spendInPeriodMinor": str(rng.randint(0, 600_000)),
            },
        }
        lines.append({"at": (DAY - timedelta(hours=1)).isoformat(), "user": user})
    n = 0

    def push(at: datetime, bu: str, scenario: str, user: int, params: dict[str, str], **extra: object) -> None:
        nonlocal n
        n += 1
        request = {"requestId": f"t-{n}", "userId": f"u-{user:03d}", "scenario": scenario, "params": params, **extra}
        lines.append({"at": at.isoformat(), "bu": bu, "request": request})

    for user in range(40):
        push(
            DAY + timedelta(minutes=5 + user),
            "marketing",
            "double11.presale",
            user,
            {"deposit": "50", "discount": "150"},
            campaignId="d11-presale",
            priority=60,
        )
        push(
            DAY + timedelta(hours=10, minutes=user),
            "order",
            "coupon.flash",
            user,
            {"amount": "20", "expires": "11-12"},
            campaignId="winback-11",
        )
        push(
            DAY + timedelta(hours=15, minutes=user),
            "growth",
            "new.arrivals",
            user,
            {"category_name": "kitchen"},
            campaignId="kitchen-11",
            content={"title": "New in kitchen", "body": "Fresh picks", "url": "https://m.shop.example.com/kitchen"},
        )
        for k in range(rng.randint(0, 3)):
            at = DAY + timedelta(minutes=rng.randint(0, 24 * 60 - 1))
            push(
                at,
                "logistics",
                "order.shipped",
                user,
                {"order_id": f"O-{user}-{k}", "carrier": "SF", "tracking_no": f"SF{user}{k}"},
                dedupKey=f"O-{user}-{k}-shipped",
            )
        for k in range(rng.randint(0, 4)):
            at = DAY + timedelta(minutes=rng.randint(0, 24 * 60 - 1))
            push(
                at,
                "growth",
                "price.drop",
                user,
                {"item_name": f"item {k}", "new_price": "99"},
                dedupKey=f"pd-{user}-{k}",
            )
    lines.sort(key=lambda line: line["at"])
    out = Path(__file__).with_name("traffic-day.jsonl")
    out.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines), encoding="utf-8")
    print(f"wrote {len(lines)} lines to {out}")


if __name__ == "__main__":
    main()
