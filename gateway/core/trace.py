"""Decision traces: kept as data while deciding (``Step``), turned into sentences only
when someone reads them (GetMessage, Explain, ``herald policy explain``).

Each step's ``args`` are plain values (strings, numbers, lists, epoch seconds for
times) so that a stored trace decodes to the same text as a fresh one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from gateway.values.records import Step


def local(epoch: float, tz: str) -> str:
    """``2026-11-11 12:03 Asia/Shanghai``."""
    return f"{datetime.fromtimestamp(epoch, UTC).astimezone(ZoneInfo(tz)):%Y-%m-%d %H:%M} {tz}"


def _route(plan: Sequence[str], skipped: Sequence[Sequence[str]]) -> str:
    text = f"route: {' then '.join(plan)}"
    if skipped:
        text += " (skipped " + ", ".join(f"{channel} {why}" for channel, why in skipped) + ")"
    return text


def _score(value: float, weight: int, priority: int, fit: float, tier: str, targeted: bool) -> str:
    how = f"weight {weight} x (0.5 + priority {priority}/100) x fit {fit:g}"
    how += f" (tier {tier} {'in' if fit == 1.0 else 'not in'} targets)" if targeted else " (no target tiers)"
    return f"score {value:g} = {how}"


def _held(rivals: Sequence[Sequence[Any]], tz: str) -> str:
    if not rivals:
        return "held for the user: nothing else"
    parts = [
        f"{mid} {scenario} of {bu} (score {score:g}, due {local(due, tz)})" for mid, scenario, bu, score, due in rivals
    ]
    return "held for the user: " + "; ".join(parts)


def _final(outcome: str, reason: str | None, detail: str) -> str:
    return f"=> {outcome}{'/' + reason if reason else ''}: {detail}"


RENDER: dict[str, Callable[..., str]] = {
    "switch": lambda: "kill switch: none matches",
    "route": _route,
    "dedup": lambda key, window: f"dedup: '{key}' not seen within {window}",
    "quiet-exempt": lambda category: f"quiet hours: {category} is exempt",
    "quiet-off": lambda start, end, at, tz: f"quiet hours {start}-{end}: not now ({local(at, tz)})",
    "cap": lambda label, window, used, limit: f"cap {label} ({window}): {used} of {limit} used",
    "score": _score,
    "rival": lambda mid, scenario, value: f"competitor {mid} ({scenario}) won with score {value:g}",
    "released": lambda at, tz: f"released at {local(at, tz)}",
    "pool": lambda due, tz, joined: (
        f"joins the user's pool of competing claims, decided {local(due, tz)}"
        if joined
        else f"starts the user's pool of competing claims, decided {local(due, tz)}"
    ),
    "tier": lambda tier: f"user's RFM tier: {tier}",
    "held": _held,
    "predict": lambda at, tz, text: f"predicted at {local(at, tz)}: {text}",
    "final": _final,
}


def render(steps: Iterable[Step]) -> list[str]:
    """The trace as sentences, one a step (an unknown step code shows as its data)."""
    out = []
    for step in steps:
        draw = RENDER.get(step.code)
        try:
            out.append(draw(*step.args) if draw else f"{step.code}: {list(step.args)}")
        except (TypeError, ValueError):
            out.append(f"{step.code}: {list(step.args)}")
    return out
