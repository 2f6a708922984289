"""PushService.ListMessages end to end: a user's messages, newest first, on both stores."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from gateway.masking import user_ref
from herald.v1 import push_pb2, types_pb2
from tests.e2e.conftest import Api, auth
from tests.e2e.test_push import shipped, ts


def newest_first(messages: list[push_pb2.Message]) -> list[str]:
    """The order the index lists: creation millisecond, then id, both descending."""
    key = [(m.created_at.ToMilliseconds(), m.message_id) for m in messages]
    return [mid for _, mid in sorted(key, reverse=True)]


async def listed(api: Api, bu: str = "order", **fields: object) -> list[push_pb2.Message]:
    """Every page of a listing."""
    out: list[push_pb2.Message] = []
    token = ""
    while True:
        request = push_pb2.ListMessagesRequest(page_token=token, **fields)  # type: ignore[arg-type]
        page = await api.push.ListMessages(request, metadata=auth(bu))
        out += page.messages
        token = page.next_page_token
        if not token:
            return out


async def sent(api: Api) -> dict[str, str]:
    """A few messages of u-1 from two units, and one of another user: request -> message id."""
    await api.add_follower("u-1")
    await api.add_follower("u-2")
    ids = {}
    for request in (
        shipped("r-1"),
        shipped("r-2", dedup_key="O-9:shipped"),
        shipped("r-3", dedup_key="O-9:shipped"),  # a duplicate: suppressed
        push_pb2.PushRequest(
            request_id="r-4", user_id="u-1", scenario="order.paid", params={"order_id": "O-2", "amount": "9"}
        ),
        shipped("r-5", user_id="u-2"),
    ):
        ids[request.request_id] = (await api.push.Push(request, metadata=auth("order"))).message_id
    arrived = push_pb2.PushRequest(
        request_id="l-1", user_id="u-1", scenario="delivery.arrived", params={"order_id": "O-1"}
    )
    ids["l-1"] = (await api.push.Push(arrived, metadata=auth("logistics"))).message_id
    return ids


async def test_a_users_messages_newest_first_page_by_page_and_only_the_callers(api: Api) -> None:
    ids = await sent(api)
    everything = await listed(api, user_id="u-1", page_size=100)
    mine = {ids[r] for r in ("r-1", "r-2", "r-3", "r-4")}
    assert {m.message_id for m in everything} == mine  # not logistics', not u-2's
    assert [m.message_id for m in everything] == newest_first(everything)
    assert all(m.user_id == "u-1" and m.business_unit == "order" and m.timeline for m in everything)
    # Page by page: the same, in the same order.
    assert [m.message_id for m in await listed(api, user_id="u-1", page_size=1)] == [m.message_id for m in everything]
    first = await api.push.ListMessages(
        push_pb2.ListMessagesRequest(user_id="u-1", page_size=3), metadata=auth("order")
    )
    assert len(first.messages) == 3 and first.next_page_token
    # The other unit sees its own.
    assert [m.message_id for m in await listed(api, "logistics", user_id="u-1")] == [ids["l-1"]]
    assert await listed(api, user_id="nobody") == []


async def test_filters_by_scenario_outcome_and_time(api: Api) -> None:
    ids = await sent(api)
    paid = await listed(api, user_id="u-1", scenario="order.paid")
    assert [m.message_id for m in paid] == [ids["r-4"]]
    [duplicate] = await listed(api, user_id="u-1", outcome=types_pb2.SUPPRESSED)
    assert duplicate.message_id == ids["r-3"] and duplicate.reason == types_pb2.DUPLICATE
    accepted = await listed(api, user_id="u-1", outcome=types_pb2.ACCEPTED, page_size=1)
    assert {m.message_id for m in accepted} == {ids["r-1"], ids["r-2"], ids["r-4"]}
    now = datetime.now(UTC)
    assert await listed(api, user_id="u-1", since=ts(now + timedelta(seconds=1))) == []
    assert await listed(api, user_id="u-1", until=ts(now - timedelta(minutes=1))) == []
    recent = await listed(
        api, user_id="u-1", since=ts(now - timedelta(minutes=1)), until=ts(now + timedelta(seconds=1))
    )
    assert len(recent) == 4


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"user_id": ""}, "user_id: is required"),
        ({"user_id": "u-1", "page_size": 101}, "page_size: must be 1-100"),
        ({"user_id": "u-1", "page_token": "not-a-token"}, "page_token: is not a token this listing returned"),
        ({"user_id": "u-1", "outcome": 9}, "outcome: unknown value 9"),
    ],
)
async def test_bad_listings_name_the_field(api: Api, fields: dict[str, object], problem: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.push.ListMessages(push_pb2.ListMessagesRequest(**fields), metadata=auth("order"))  # type: ignore[arg-type]
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert problem in (info.value.details() or "")


async def test_a_page_token_is_good_only_for_its_own_filters(api: Api) -> None:
    await sent(api)
    page = await api.push.ListMessages(push_pb2.ListMessagesRequest(user_id="u-1", page_size=1), metadata=auth("order"))
    other = push_pb2.ListMessagesRequest(
        user_id="u-1", page_size=1, scenario="order.paid", page_token=page.next_page_token
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.push.ListMessages(other, metadata=auth("order"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as info:  # nor another unit's
        await api.push.ListMessages(
            push_pb2.ListMessagesRequest(user_id="u-1", page_size=1, page_token=page.next_page_token),
            metadata=auth("logistics"),
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_decision_log_names_the_user_by_the_hash_the_cli_shows(
    api: Api, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.logs import configure

    configure("INFO", json=True)
    await api.add_follower("u-1")
    answer = await api.push.Push(shipped("r-log"), metadata=auth("order"))
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    [decision] = [e for e in events if e.get("event") == "decision" and e.get("message_id") == answer.message_id]
    assert decision["user_ref"] == user_ref("u-1") and len(decision["user_ref"]) == 12
    assert "u-1" not in json.dumps(decision)
