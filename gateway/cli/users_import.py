"""``herald users import FILE``: bulk profile import through ProfileService.UpsertUsers.

The file is read as a stream (a million rows never sit in memory), sent in batches
with a few batches in flight, and every rejected row is reported with its line number
and reason. CSV columns and JSON Lines keys are described in docs/users-import.md.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import grpc
from google.protobuf import json_format
from google.protobuf.field_mask_pb2 import FieldMask

from gateway.api.convert import dt_to_ts
from gateway.cli.progress import ProgressLine
from herald.v1 import profile_pb2, profile_pb2_grpc

CSV_COLUMNS = (
    "user_id",
    "openid",
    "unionid",
    "following",
    "phone",
    "email",
    "timezone",
    "locale",
    "last_purchase_at",
    "orders_in_period",
    "spend_in_period_minor",
    "device_tokens",
    "tags",
)
ATTRIBUTE_PREFIX = "attr."
SECTION_OF_COLUMN = {
    "openid": "wechat",
    "unionid": "wechat",
    "following": "wechat",
    "phone": "phone",
    "email": "email",
    "timezone": "timezone",
    "locale": "locale",
    "last_purchase_at": "rfm",
    "orders_in_period": "rfm",
    "spend_in_period_minor": "rfm",
    "device_tokens": "device_tokens",
    "tags": "tags",
}
JSON_SECTIONS = {
    "wechat": "wechat",
    "phone": "phone",
    "email": "email",
    "deviceTokens": "device_tokens",
    "device_tokens": "device_tokens",
    "timezone": "timezone",
    "locale": "locale",
    "rfm": "rfm",
    "tags": "tags",
    "attributes": "attributes",
}
DEFAULT_TAG_SEPARATOR = "|"
SHOWN_REJECTS = 20


class ImportError_(Exception):
    """The file cannot be imported at all (bad header, unknown format)."""


@dataclass
class Row:
    line: int
    request: profile_pb2.UpsertUserRequest | None
    error: str = ""


@dataclass
class Summary:
    rows: int = 0
    imported: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    rejected_count: int = 0

    def reject(self, line: int, reason: str, keep: int) -> None:
        self.rejected_count += 1
        if len(self.rejected) < keep:
            self.rejected.append((line, reason))


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "y"):
        return True
    if lowered in ("", "0", "false", "no", "n"):
        return False
    raise ValueError(f"following: '{text}' is not true/false")


def _csv_request(
    row: dict[str, str], sections: list[str], tag_separator: str = DEFAULT_TAG_SEPARATOR
) -> profile_pb2.UpsertUserRequest:
    user = profile_pb2.User(user_id=row.get("user_id", "").strip())
    user.tags.extend(sorted({t.strip() for t in (row.get("tags") or "").split(tag_separator) if t.strip()}))
    for column, value in row.items():
        if column.startswith(ATTRIBUTE_PREFIX) and value.strip():
            user.attributes[column[len(ATTRIBUTE_PREFIX) :]] = value.strip()
    if row.get("openid"):
        user.wechat.openid = row["openid"].strip()
        user.wechat.unionid = row.get("unionid", "").strip()
        user.wechat.following = _bool(row.get("following", ""))
    user.phone = row.get("phone", "").strip()
    user.email = row.get("email", "").strip()
    user.timezone = row.get("timezone", "").strip()
    user.locale = row.get("locale", "").strip()
    if row.get("last_purchase_at"):
        try:
            when = datetime.fromisoformat(row["last_purchase_at"].strip())
        except ValueError:
            raise ValueError(f"last_purchase_at: '{row['last_purchase_at']}' is not an ISO-8601 time") from None
        user.rfm.last_purchase_at.CopyFrom(dt_to_ts(when if when.tzinfo else when.replace(tzinfo=UTC)))
    for name in ("orders_in_period", "spend_in_period_minor"):
        text = row.get(name, "").strip()
        if text:
            try:
                setattr(user.rfm, name, int(text))
            except ValueError:
                raise ValueError(f"{name}: '{text}' is not a whole number") from None
    for item in filter(None, (row.get("device_tokens") or "").split("|")):
        parts = item.strip().split(":", 2)
        if len(parts) != 3:
            raise ValueError("device_tokens: write PLATFORM:PROVIDER:TOKEN, several joined by |")
        platform, provider, token = parts
        try:
            user.device_tokens.add(
                platform=profile_pb2.Platform.Value(platform.upper()),
                provider=profile_pb2.PushProvider.Value(provider.upper()),
                token=token,
            )
        except ValueError:
            raise ValueError(f"device_tokens: unknown platform or provider in '{platform}:{provider}'") from None
    return profile_pb2.UpsertUserRequest(user=user, update_mask=FieldMask(paths=sections))


def csv_rows(stream: IO[str], tag_separator: str = DEFAULT_TAG_SEPARATOR) -> Iterator[Row]:
    reader = csv.DictReader(stream)
    header = reader.fieldnames or []
    attributes = [c for c in header if c.startswith(ATTRIBUTE_PREFIX)]
    if any(c == ATTRIBUTE_PREFIX for c in attributes):
        raise ImportError_(f"the column '{ATTRIBUTE_PREFIX}' names no attribute; write {ATTRIBUTE_PREFIX}city")
    unknown = [c for c in header if c not in CSV_COLUMNS and c not in attributes]
    if "user_id" not in header:
        raise ImportError_("the CSV header has no user_id column")
    if unknown:
        raise ImportError_(
            f"unknown column(s) {', '.join(unknown)}; known columns: {', '.join(CSV_COLUMNS)}"
            f" and {ATTRIBUTE_PREFIX}<name> for attributes"
        )
    sections = sorted({SECTION_OF_COLUMN[c] for c in header if c in SECTION_OF_COLUMN})
    if attributes:
        sections = sorted([*sections, "attributes"])
    for row in reader:
        line = reader.line_num
        extra = row.pop(None, None)
        short = [name for name, value in row.items() if value is None]
        if extra or short:
            count = len(header) + len(extra or []) - len(short)
            yield Row(line, None, f"has {count} fields; the header has {len(header)}")
            continue
        try:
            yield Row(line, _csv_request(row, sections, tag_separator))
        except ValueError as exc:
            yield Row(line, None, str(exc))


def jsonl_rows(stream: IO[str]) -> Iterator[Row]:
    for line_no, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict):
                raise ValueError("each line must be a JSON object")
            user = json_format.ParseDict(data, profile_pb2.User())
        except (ValueError, json_format.ParseError) as exc:
            yield Row(line_no, None, f"not a User object: {str(exc)[:200]}")
            continue
        sections = sorted({JSON_SECTIONS[k] for k in data if k in JSON_SECTIONS})
        yield Row(line_no, profile_pb2.UpsertUserRequest(user=user, update_mask=FieldMask(paths=sections)))


class Progress:
    """The import's progress line: the share of the file read, rows and their rate."""

    def __init__(self, total_bytes: int, out: IO[str] = sys.stderr) -> None:
        self.total = max(total_bytes, 1)
        self.line = ProgressLine(out)

    def update(self, done_bytes: int, summary: Summary, final: bool = False) -> None:
        if not self.line.due(final):
            return
        share = min(done_bytes / self.total, 1.0)
        rate = summary.rows / self.line.elapsed()
        text = (
            f"{share:6.1%} {summary.rows:,} rows  {summary.imported:,} imported  "
            f"{summary.rejected_count:,} rejected  {rate:,.0f} rows/s"
        )
        self.line.show(share, text, final)


async def _batches(rows: Iterator[Row], size: int) -> AsyncIterator[list[Row]]:
    batch: list[Row] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
            await asyncio.sleep(0)
    if batch:
        yield batch


async def import_file(
    path: Path,
    target: str,
    api_key: str,
    *,
    fmt: str | None = None,
    batch_size: int = 500,
    concurrency: int = 4,
    keep_rejects: int = 1000,
    tag_separator: str = DEFAULT_TAG_SEPARATOR,
    progress_out: IO[str] | None = sys.stderr,
) -> Summary:
    kind = fmt or (
        "csv" if path.suffix.lower() == ".csv" else "jsonl" if path.suffix.lower() in (".jsonl", ".ndjson") else ""
    )
    if kind not in ("csv", "jsonl"):
        raise ImportError_(f"cannot tell the format of '{path.name}'; name it .csv or .jsonl, or pass --format")
    if not 1 <= batch_size <= 1000:
        raise ImportError_("--batch must be between 1 and 1000")
    if not tag_separator or tag_separator in ('"', "\n"):
        raise ImportError_("--tag-separator must be one or more characters other than a quote or newline")
    summary = Summary()
    size = os.path.getsize(path)  # noqa: ASYNC240 (a CLI, before any I/O starts)
    progress = Progress(size, progress_out) if progress_out else None
    raw = path.open("rb")
    stream = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="" if kind == "csv" else None)
    rows = csv_rows(stream, tag_separator) if kind == "csv" else jsonl_rows(stream)
    metadata = (("authorization", f"Bearer {api_key}"),)
    gate = asyncio.Semaphore(concurrency)
    failures: list[BaseException] = []

    async with grpc.aio.insecure_channel(target) as channel:
        stub = profile_pb2_grpc.ProfileServiceStub(channel)

        async def send(batch: list[Row]) -> None:
            try:
                valid = [row for row in batch if row.request is not None]
                if valid:
                    response = await stub.UpsertUsers(
                        profile_pb2.UpsertUsersRequest(requests=[r.request for r in valid if r.request is not None]),
                        metadata=metadata,
                        timeout=60,
                    )
                    for row, result in zip(valid, response.results, strict=True):
                        if result.error_code:
                            summary.reject(row.line, result.error_message, keep_rejects)
                        else:
                            summary.imported += 1
            except BaseException as exc:  # surfaced after the loop
                failures.append(exc)
            finally:
                gate.release()

        tasks = set()
        try:
            async for batch in _batches(rows, batch_size):
                if failures:
                    break
                for row in batch:
                    summary.rows += 1
                    if row.request is None:
                        summary.reject(row.line, row.error, keep_rejects)
                await gate.acquire()
                task = asyncio.create_task(send(batch))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                if progress:
                    progress.update(raw.tell(), summary)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            stream.close()
    if failures:
        exc = failures[0]
        if isinstance(exc, grpc.aio.AioRpcError):
            raise ImportError_(f"the gateway refused the import: {exc.code().name}: {exc.details()}") from None
        raise exc
    if progress:
        progress.update(progress.total, summary, final=True)
    summary.rejected.sort()
    return summary


def print_summary(summary: Summary, out: IO[str] = sys.stdout) -> None:
    out.write(f"{summary.imported:,} of {summary.rows:,} rows imported, {summary.rejected_count:,} rejected\n")
    for line, reason in summary.rejected[:SHOWN_REJECTS]:
        out.write(f"  line {line}: {reason}\n")
    hidden = summary.rejected_count - min(len(summary.rejected), SHOWN_REJECTS)
    if hidden > 0:
        out.write(f"  ... and {hidden:,} more (use --rejects FILE to write them all)\n")


def write_rejects(summary: Summary, path: Path) -> None:
    with path.open("w", encoding="utf-8") as out:
        for line, reason in summary.rejected:
            out.write(f"{line}\t{reason}\n")
