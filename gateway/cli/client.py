"""Client commands for trying the API by hand: ``send``, ``status``, ``info``."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from gateway.api.convert import dt_to_ts
from herald.v1 import push_pb2, push_pb2_grpc, types_pb2


class ClientError(Exception):
    pass


@contextmanager
def channel(target: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(target) as chan:
        yield chan


def metadata(api_key: str) -> tuple[tuple[str, str], ...]:
    if not api_key:
        raise ClientError("no API key: pass --api-key or set HERALD_API_KEY (the README lists the sample keys)")
    return (("authorization", f"Bearer {api_key}"),)


def explain_rpc_error(exc: grpc.RpcError, target: str) -> str:
    code = exc.code()
    details = exc.details()
    if code is grpc.StatusCode.UNAVAILABLE and ("connect" in (details or "").lower() or "refused" in (details or "")):
        return f"cannot reach the gateway at {target}: is `herald serve` running there? ({details})"
    return f"{code.name}: {details}"


class RpcFailed(Exception):
    """A call the gateway refused or could not take; the message says why."""


def call(
    target: str,
    api_key: str,
    method: str,
    request: Message,
    *,
    stub: Callable[[grpc.Channel], Any] = push_pb2_grpc.PushServiceStub,
    timeout: float = 10,
) -> Any:
    """One call (PushService unless ``stub`` says another), its failure turned into a
    sentence for a person."""
    with channel(target) as chan:
        try:
            return getattr(stub(chan), method)(request, metadata=metadata(api_key), timeout=timeout)
        except grpc.RpcError as exc:
            raise RpcFailed(explain_rpc_error(exc, target)) from None


def parse_params(items: list[str]) -> dict[str, str]:
    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ClientError(f"--param '{item}' must be NAME=VALUE")
        params[key] = value
    return params


def parse_time(text: str, flag: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ClientError(f"{flag} '{text}' is not an ISO-8601 time such as 2026-11-11T08:00:00+08:00") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def enum_name(enum: object, value: int) -> str:
    return str(enum.Name(value))  # type: ignore[attr-defined]


def print_response(response: push_pb2.PushResponse) -> None:
    outcome = enum_name(types_pb2.Outcome, response.outcome)
    reason = f"/{enum_name(types_pb2.Reason, response.reason)}" if response.reason else ""
    category = enum_name(types_pb2.Category, response.category).lower()
    what = f"message {response.message_id}" if response.message_id else "explained, nothing sent"
    print(f"{outcome}{reason}  {what}  ({category}, policy {response.policy_version})")
    if response.channel_plan:
        print("  plan:   " + " -> ".join(enum_name(types_pb2.Channel, c) for c in response.channel_plan))
    if response.HasField("scheduled_at"):
        print(f"  at:     {response.scheduled_at.ToDatetime(tzinfo=UTC).isoformat()}")
    print(f"  detail: {response.detail}")


def send(
    target: str,
    api_key: str,
    *,
    scenario: str,
    user: str,
    params: list[str],
    request_id: str | None,
    title: str,
    body: str,
    url: str,
    campaign: str,
    dedup_key: str,
    not_before: str | None,
    deadline: str | None,
    priority: int | None,
    as_json: bool,
) -> int:
    request = push_pb2.PushRequest(
        request_id=request_id or f"cli-{uuid.uuid4().hex[:16]}",
        user_id=user,
        scenario=scenario,
        params=parse_params(params),
        campaign_id=campaign,
        dedup_key=dedup_key,
    )
    if title or body or url:
        request.content.CopyFrom(push_pb2.Content(title=title, body=body, url=url))
    if not_before:
        request.not_before.CopyFrom(dt_to_ts(parse_time(not_before, "--not-before")))
    if deadline:
        request.deadline.CopyFrom(dt_to_ts(parse_time(deadline, "--deadline")))
    if priority is not None:
        request.priority = priority
    response = call(target, api_key, "Push", request)
    if as_json:
        print(json_format.MessageToJson(response))
    else:
        print_response(response)
    return 0


def status(target: str, api_key: str, message_id: str, as_json: bool) -> int:
    message = call(target, api_key, "GetMessage", push_pb2.GetMessageRequest(message_id=message_id))
    if as_json:
        print(json_format.MessageToJson(message))
        return 0
    outcome = enum_name(types_pb2.Outcome, message.outcome)
    reason = f"/{enum_name(types_pb2.Reason, message.reason)}" if message.reason else ""
    print(f"{message.message_id}  {message.scenario}  {outcome}{reason}  status: {message.status}")
    print(f"  detail: {message.detail}")
    for event in message.timeline:
        at = event.at.ToDatetime(tzinfo=UTC).isoformat(timespec="milliseconds")
        chan_name = enum_name(types_pb2.Channel, event.channel) if event.channel else ""
        code = f" [{event.provider_code}]" if event.provider_code else ""
        print(f"  {at}  {event.kind:<10} {chan_name}{code}  {event.detail}")
    return 0


def info(target: str, api_key: str, as_json: bool) -> int:
    policy = call(target, api_key, "GetPolicyInfo", push_pb2.GetPolicyInfoRequest())
    if as_json:
        print(json_format.MessageToJson(policy))
        return 0
    loaded = policy.loaded_at.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds")
    print(f"policy {policy.version} (loaded {loaded}); you are '{policy.business_unit}'")
    for scenario in policy.scenarios:
        params = ", ".join(list(scenario.required_params) + [f"[{p}]" for p in scenario.optional_params])
        category = enum_name(types_pb2.Category, scenario.category).lower()
        free = " +free text" if scenario.free_text else ""
        print(f"  {scenario.name:<20} {category:<9} params: {params or '-'}{free}")
    return 0


def explain(
    target: str,
    api_key: str,
    *,
    user: str,
    scenario: str,
    at: str | None,
    params: list[str],
    campaign: str,
    dedup_key: str,
    priority: int | None,
    as_json: bool,
) -> int:
    request = push_pb2.ExplainRequest(
        request=push_pb2.PushRequest(
            request_id=f"explain-{uuid.uuid4().hex[:12]}",
            user_id=user,
            scenario=scenario,
            params=parse_params(params),
            campaign_id=campaign,
            dedup_key=dedup_key,
        )
    )
    if priority is not None:
        request.request.priority = priority
    if at:
        request.at.CopyFrom(dt_to_ts(parse_time(at, "--at")))
    answer = call(target, api_key, "Explain", request)
    if as_json:
        print(json_format.MessageToJson(answer))
        return 0
    for line in answer.trace:
        print(f"  {line}")
    print_response(answer.decision)
    return 0
