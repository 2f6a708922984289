"""A user's messages, newest first: why did user X (not) get message Y.

The store keeps an index of each user's message ids by creation time, written in the
same step as each message (``Store.user_messages``). A listing walks it from a cursor,
reads the messages a chunk at a time and keeps those of the caller's business unit that
match the filters; the cursor after the last message looked at is the next page's token.
A call looks at no more than ``keys.USER_MESSAGES_KEEP`` ids (the index holds no more),
so a page may come back short, with a token to go on, when few messages match.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from datetime import datetime

import msgspec

from gateway.core.validate import check_user_id
from gateway.errors import InvalidArgument
from gateway.store import keys
from gateway.store.base import IndexCursor, Store
from gateway.values.domain import Outcome
from gateway.values.records import MessageRecord

DEFAULT_PAGE = 20
MAX_PAGE = 100
# Ids read from the index a round trip (then their messages, one more).
CHUNK = 100


class HistoryQuery(msgspec.Struct, frozen=True, gc=False):
    user_id: str
    since: datetime | None = None  # created at or after
    until: datetime | None = None  # created before
    scenario: str = ""
    outcome: Outcome | None = None  # where the message stands now
    page_size: int = 0  # 0: DEFAULT_PAGE
    page_token: str = ""

    def filters(self, bu: str) -> str:
        """What a page token is good for: the same unit, user and filters."""
        text = "\0".join(
            [
                bu,
                self.user_id,
                "" if self.since is None else self.since.isoformat(),
                "" if self.until is None else self.until.isoformat(),
                self.scenario,
                "" if self.outcome is None else self.outcome.value,
            ]
        )
        return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()

    def matches(self, bu: str, record: MessageRecord) -> bool:
        return (
            record.business_unit == bu
            and record.user_id == self.user_id
            and (self.since is None or record.created_at >= self.since)
            and (self.until is None or record.created_at < self.until)
            and (not self.scenario or record.scenario == self.scenario)
            and (self.outcome is None or record.outcome is self.outcome)
        )


class _Token(msgspec.Struct, frozen=True, array_like=True):
    filters: str
    at_ms: int | None
    skip: int


def encode_token(query: HistoryQuery, bu: str, cursor: IndexCursor) -> str:
    raw = msgspec.msgpack.encode(_Token(query.filters(bu), cursor.at_ms, cursor.skip))
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(query: HistoryQuery, bu: str) -> IndexCursor | None:
    if not query.page_token:
        return None
    bad = InvalidArgument(
        "page_token", "is not a token this listing returned (or its filters changed); list again without it"
    )
    try:
        raw = base64.urlsafe_b64decode(query.page_token + "=" * (-len(query.page_token) % 4))
        token = msgspec.msgpack.decode(raw, type=_Token)
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise bad from None
    if token.filters != query.filters(bu) or token.skip < 0:
        raise bad
    return IndexCursor(token.at_ms, token.skip)


def _start(query: HistoryQuery) -> IndexCursor:
    if query.until is None:
        return IndexCursor()
    return IndexCursor(int(query.until.timestamp() * 1000))


async def list_messages(store: Store, bu: str, query: HistoryQuery) -> tuple[list[MessageRecord], str]:
    """One page of the user's messages of business unit ``bu``, newest first, and the
    token of the next page ("" when there is none)."""
    check_user_id(query.user_id)
    size = query.page_size or DEFAULT_PAGE
    if not 1 <= size <= MAX_PAGE:
        raise InvalidArgument("page_size", f"must be 1-{MAX_PAGE} (0: {DEFAULT_PAGE})")
    if query.since is not None and query.until is not None and query.since >= query.until:
        raise InvalidArgument("until", "must be after since")
    cursor = decode_token(query, bu) or _start(query)
    found: list[MessageRecord] = []
    looked = 0
    while looked < keys.USER_MESSAGES_KEEP:
        want = min(CHUNK, keys.USER_MESSAGES_KEEP - looked)
        entries = await store.user_messages(query.user_id, cursor, query.since, want)
        records = await store.get_messages([message_id for message_id, _ in entries]) if entries else []
        for index, ((_, at_ms), record) in enumerate(zip(entries, records, strict=True)):
            cursor = cursor.past(at_ms)
            looked += 1
            if record is not None and query.matches(bu, record):
                found.append(record)
                if len(found) == size:
                    last = index == len(entries) - 1 and len(entries) < want
                    return found, "" if last else encode_token(query, bu, cursor)
        if len(entries) < want:
            return found, ""
    return found, encode_token(query, bu, cursor)
