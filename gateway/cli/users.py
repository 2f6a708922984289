"""``herald users history|get|opt-out|opt-in|delete|export USER``: one user, as support
and privacy requests need them, through PushService and ProfileService.

``get`` masks contact points (a support person rarely needs them whole; ``--json``
prints what the API answers). ``export`` prints everything as JSON, unmasked: it is the
answer to the user's own request for their data. ``delete`` asks before it erases.

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

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from gateway.cli.client import ClientError, RpcFailed, call, enum_name, parse_time
from gateway.durations import parse_duration
from gateway.masking import mask_email, mask_phone, mask_token, user_ref
from gateway.values.domain import Category, Channel
from herald.v1 import profile_pb2, profile_pb2_grpc, push_pb2, types_pb2

OUTCOMES = ("accepted", "scheduled", "suppressed")
CATEGORIES = tuple(c.value for c in Category)
CHANNELS = tuple(c.value for c in Channel)
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

    get = users.add_parser(
        "get",
        help="a user's profile: contact points (masked), tier, tags, opt-outs, interactions",
        description="Show a user's profile (ProfileService.GetUser; the `read` profile grant). Phone, email, "
        "openid and device tokens are masked; --json prints the profile whole.",
    )
    get.add_argument("user", help="the user id")
    add_client_options(get)
    for name, what in (("opt-out", "opt a user out of"), ("opt-in", "opt a user back into")):
        sub = users.add_parser(
            name,
            help=f"{what} a category, a channel, or a category on a channel",
            description=f"{what.capitalize()} a category, a channel, or a category on a channel "
            "(ProfileService.SetOptOut; the `write` profile grant). Basic messages cannot be opted out of "
            "as a whole, only on a channel.",
        )
        sub.add_argument("user", help="the user id")
        sub.add_argument("--category", choices=CATEGORIES, type=str.lower, help="basic, reminder or marketing")
        sub.add_argument("--channel", choices=CHANNELS, type=str.upper, help="a channel, e.g. SMS")
        sub.add_argument("--source", default="cli", help="where the request came from (default cli)")
        add_client_options(sub)
    delete = users.add_parser(
        "delete",
        help="erase a user and everything Herald holds of them (a privacy request)",
        description="Erase a user (ProfileService.DeleteUser; the `write` profile grant): the profile and "
        "arbitration state, the openid, audience and due index entries, the user's messages with their "
        "requests' answers, and the index of their messages. Prints what was removed, as counts. Stop "
        "sending to the user first: a push afterwards starts from nothing again.",
    )
    delete.add_argument("user", help="the user id")
    delete.add_argument("--yes", action="store_true", help="do not ask (needed when not on a terminal)")
    add_client_options(delete)
    export = users.add_parser(
        "export",
        help="print everything Herald holds of a user as JSON (a privacy request)",
        description="Print everything Herald holds of a user as JSON (ProfileService.ExportUser; the `write` "
        "profile grant, since it holds every unit's messages): the profile with opt-outs and interactions, "
        "the messages still kept with their timelines, and what arbitration keeps.",
    )
    export.add_argument("user", help="the user id")
    add_client_options(export)


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
        page = call(args.target, args.api_key, "ListMessages", request, timeout=30)
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


def _profiles(args: argparse.Namespace, method: str, request: Any) -> Any:
    return call(args.target, args.api_key, method, request, stub=profile_pb2_grpc.ProfileServiceStub, timeout=30)


def _as_json(message: Any) -> str:
    return json.dumps(json_format.MessageToDict(message), ensure_ascii=False, indent=2)


def _at(stamp: Timestamp) -> str:
    return stamp.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds")


def print_user(user: profile_pb2.User) -> None:
    """A profile for a person to read, contact points masked."""
    print(f"user {user.user_id}  (log id user_ref={user_ref(user.user_id)})  tier {user.rfm_tier or '-'}")
    if user.HasField("wechat"):
        following = "following" if user.wechat.following else "not following"
        print(f"  wechat:     {mask_token(user.wechat.openid)} ({following})")
    print(f"  phone:      {mask_phone(user.phone) if user.phone else '-'}")
    print(f"  email:      {mask_email(user.email) if user.email else '-'}")
    tokens = [
        f"{profile_pb2.Platform.Name(t.platform)}/{profile_pb2.PushProvider.Name(t.provider)} {mask_token(t.token)}"
        for t in user.device_tokens
    ]
    print(f"  devices:    {', '.join(tokens) or '-'}")
    print(f"  zone:       {user.timezone or '(policy default)'}  locale: {user.locale or '-'}")
    print(f"  tags:       {', '.join(user.tags) or '-'}")
    if user.attributes:
        print("  attributes: " + ", ".join(f"{k}={v}" for k, v in sorted(user.attributes.items())))
    opt_outs = [
        f"{_opt_out_scope(o)} since {_at(o.at)}" + (f" ({o.source})" if o.source else "") for o in user.opt_outs
    ]
    print(f"  opted out:  {'; '.join(opt_outs) or '-'}")
    kinds = [f"{profile_pb2.InteractionKind.Name(i.kind)} {_at(i.at)}" for i in user.recent_interactions[:5]]
    print(f"  recent:     {'; '.join(kinds) or '-'}")
    if user.HasField("updated_at"):
        print(f"  updated:    {_at(user.updated_at)}")


def _opt_out_scope(entry: profile_pb2.OptOut) -> str:
    category = enum_name(types_pb2.Category, entry.category).lower() if entry.category else "every category"
    channel = enum_name(types_pb2.Channel, entry.channel) if entry.channel else "every channel"
    return f"{category} on {channel}"


def get(args: argparse.Namespace) -> int:
    user = _profiles(args, "GetUser", profile_pb2.GetUserRequest(user_id=args.user))
    if args.json:
        print(_as_json(user))
    else:
        print_user(user)
    return 0


def opt_out(args: argparse.Namespace) -> int:
    if not args.category and not args.channel:
        raise ClientError("give --category, --channel or both")
    request = profile_pb2.SetOptOutRequest(
        user_id=args.user, opted_out=args.users_command == "opt-out", source=args.source
    )
    if args.category:
        request.category = types_pb2.Category.Value(args.category.upper())
    if args.channel:
        request.channel = types_pb2.Channel.Value(args.channel)
    user = _profiles(args, "SetOptOut", request)
    if args.json:
        print(_as_json(user))
        return 0
    opt_outs = [_opt_out_scope(o) for o in user.opt_outs]
    print(f"user {user.user_id}: opted out of {'; '.join(opt_outs) if opt_outs else 'nothing'}")
    return 0


def delete(args: argparse.Namespace) -> int:
    if not args.yes:
        if not sys.stdin.isatty():
            raise ClientError("deleting a user cannot be undone: pass --yes to confirm")
        typed = input(f"Erase user '{args.user}' and everything Herald holds of them? Type the user id to confirm: ")
        if typed.strip() != args.user:
            print("herald: not deleted", file=sys.stderr)
            return 1
    erased = _profiles(args, "DeleteUser", profile_pb2.DeleteUserRequest(user_id=args.user))
    if args.json:
        print(json.dumps(json_format.MessageToDict(erased, always_print_fields_with_no_presence=True), indent=2))
        return 0
    counts = json_format.MessageToDict(
        erased, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    if not any(counts.values()):
        print(f"user {args.user}: nothing held, nothing removed")
        return 0
    print(f"user {args.user} erased (log id user_ref={user_ref(args.user)}); removed:")
    for name, count in counts.items():
        print(f"  {name.replace('_', ' '):<17} {count}")
    return 0


def export(args: argparse.Namespace) -> int:
    print(_as_json(_profiles(args, "ExportUser", profile_pb2.ExportUserRequest(user_id=args.user))))
    return 0


def run(args: argparse.Namespace) -> int:
    actions = {
        "history": history,
        "get": get,
        "opt-out": opt_out,
        "opt-in": opt_out,
        "delete": delete,
        "export": export,
    }
    try:
        return actions[args.users_command](args)
    except ClientError as exc:
        print(f"herald: {exc}", file=sys.stderr)
        return 2
    except RpcFailed as exc:
        print(f"herald: {exc}", file=sys.stderr)
        return 1
