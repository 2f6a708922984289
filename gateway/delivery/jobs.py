"""A delivery job: a decided claim and its channel plan, and its wire form for the
durable queue. The user's profile is read afresh when the job is delivered (a provider
may have said something about the user since); the one kept in the job is the
fallback when the store does not answer."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from gateway.core.claims import Claim, Content
from gateway.domain import Category, Channel
from gateway.profiles import UserProfile


@dataclass(frozen=True)
class Job:
    message_id: str
    claim: Claim
    plan: tuple[Channel, ...]
    profile: UserProfile | None = None
    queued_at: datetime | None = None


def _dt(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse(value: Any) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def encode_job(job: Job) -> bytes:
    claim = job.claim
    return orjson.dumps(
        {
            "m": job.message_id,
            "p": [str(c) for c in job.plan],
            "q": _dt(job.queued_at),
            "c": {
                "bu": claim.bu,
                "rid": claim.request_id,
                "u": claim.user_id,
                "s": claim.scenario,
                "cat": str(claim.category),
                "par": dict(claim.params),
                "con": None if claim.content is None else [claim.content.title, claim.content.body, claim.content.url],
                "cmp": claim.campaign_id,
                "dd": claim.dedup_key,
                "nb": _dt(claim.not_before),
                "dl": _dt(claim.deadline),
                "pri": claim.priority,
            },
        }
    )


class BadJob(ValueError):
    """An entry in the queue that is not a job this version understands."""


def decode_job(raw: bytes | str) -> Job:
    try:
        data = orjson.loads(raw)
        c = data["c"]
        content = None if c["con"] is None else Content(*c["con"])
        claim = Claim(
            bu=c["bu"],
            request_id=c["rid"],
            user_id=c["u"],
            scenario=c["s"],
            category=Category(c["cat"]),
            params=c["par"],
            content=content,
            campaign_id=c["cmp"],
            dedup_key=c["dd"],
            not_before=_parse(c["nb"]),
            deadline=_parse(c["dl"]),
            priority=int(c["pri"]),
        )
        return Job(data["m"], claim, tuple(Channel(p) for p in data["p"]), None, _parse(data.get("q")))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise BadJob(f"undecodable delivery job ({type(exc).__name__}: {exc})") from exc
