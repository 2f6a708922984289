"""``herald users history|get|opt-out|opt-in|delete|export USER``: one user, as support
and privacy requests need them, through PushService and ProfileService.

``history`` answers "why did user X (not) get message Y": the user's messages of your
business unit, newest first, each with its decision and where it stands. The header
names the user's log id (``gateway.masking.user_ref``), which the gateway's decision log
lines carry instead of the user id.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import json_format

from gateway.cli.client import ClientError, RpcFailed, channel, enum_name, explain_rpc_error, metadata, parse_time
from gateway.durations import parse_duration
from gateway.masking import user_ref
from herald.v1 import push_pb2, push_pb2_grpc, types_pb2

OUTCOMES = ("accepted", "scheduled", "suppressed")
PAGE = 100


def add_parsers(users: Any, add_client_options: Callable[[argparse.ArgumentParser], None]) -> None:
    """The per-user actions, beside ``users import``."""
    history = users.add_parser(
        "history",
        help="a user's messages of your unit, newest first: why did they (not) get one",
        description="List a user's messages of your business unit (PushService.ListMessages), newest first: "
        "when, scenario, outcome and reason, where each stands now, its id and the decision's detail. "
        "`herald status MESSAGE_ID` shows one message's whole timeline. The header shows the user's log id, "
        "which the gateway's decision log lines carry instead of the user id.",
    )
    history.add_argument("user", help="the user id")
    history.add_argument("--since", help="from this long ago (24h, 7d) or this ISO-8601 time")
    history.add_argument("--until", help="up to this long ago (1h) or this ISO-8601 time")
    history.add_argument("--scenario", default="", help="only this scenario")
    history.add_argument("--outcome", choices=OUTCOMES, type=str.lower, help="only messages whose outcome is now this")
    history.add_argument("--limit", type=int, default=50, help="at most this many messages (default 50)")
    add_client_options(history)


def _when(text: str | None, flag: str, now: datetime) -> datetime | None:
    """A time given as a duration back from now, or an ISO-8601 time."""
    if not text:
        return None
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        return parse_time(text, flag)
    except ClientError:
        raise ClientError(f"{flag} '{text}' is neither a duration (24h, 7d) nor an ISO-8601 time") from None


def _rpc(target: str, api_key: str, stub: Callable[[grpc.Channel], Any], method: str, request: Any) -> Any:
    with channel(target) as chan:
        try:
            return getattr(stub(chan), method)(request, metadata=metadata(api_key), timeout=30)
        except grpc.RpcError as exc:
            raise RpcFailed(explain_rpc_error(exc, target)) from None


def history(args: argparse.Namespace) -> int:
    if args.limit < 1:
        raise ClientError("--limit must be 1 or more")
    now = datetime.now(UTC)
    request = push_pb2.ListMessagesRequest(user_id=args.user, scenario=args.scenario)
    since, until = _when(args.since, "--since", now), _when(args.until, "--until", now)
    if since is not None:
        request.since.FromDatetime(since)
    if until is not None:
        request.until.FromDatetime(until)
    if args.outcome:
        request.outcome = types_pb2.Outcome.Value(args.outcome.upper())
    messages: list[push_pb2.Message] = []
    more = False
    while len(messages) < args.limit:
        request.page_size = min(PAGE, args.limit - len(messages))
        page = _rpc(args.target, args.api_key, push_pb2_grpc.PushServiceStub, "ListMessages", request)
        messages += page.messages
        request.page_token = page.next_page_token
        if not page.next_page_token:
            break
    more = bool(request.page_token) and len(messages) >= args.limit
    ref = user_ref(args.user)
    if args.json:
        out = {
            "user_id": args.user,
            "user_ref": ref,
            "messages": [json_format.MessageToDict(m) for m in messages],
            "more": more,
        }
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    print(f"user {args.user}  (log id user_ref={ref})  {len(messages)} message(s), newest first")
    for message in messages:
        at = message.created_at.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds")
        outcome = enum_name(types_pb2.Outcome, message.outcome)
        reason = f"/{enum_name(types_pb2.Reason, message.reason)}" if message.reason else ""
        print(f"  {at}  {message.scenario:<18} {outcome + reason:<32} {message.status:<10} {message.message_id}")
        if message.detail:
            print(f"      {message.detail}")
    if more:
        print(f"  ... more: raise --limit (now {args.limit}) or narrow with --since/--scenario/--outcome")
    elif not messages:
        print("  none kept: messages live for the policy's message_retention (GetMessage finds none older)")
    return 0


def run(args: argparse.Namespace) -> int:
    actions = {"history": history}
    try:
        return actions[args.users_command](args)
    except ClientError as exc:
        print(f"herald: {exc}", file=sys.stderr)
        return 2
    except RpcFailed as exc:
        print(f"herald: {exc}", file=sys.stderr)
        return 1
