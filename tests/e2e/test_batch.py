"""PushBatch: each item decided on its own, answers in order, a bad item fails itself."""

from __future__ import annotations

import grpc
import pytest

from herald.v1 import push_pb2, types_pb2
from tests.e2e.conftest import Api, auth
from tests.e2e.test_push import shipped


async def test_mixed_batch_answers_in_order(api: Api) -> None:
    await api.add_follower()
    requests = [
        shipped("b-0"),
        shipped("b-1", params={"order_id": "1"}),  # missing params
        shipped("b-2", user_id="ghost"),  # no profile: a decision, not an error
        push_pb2.PushRequest(request_id="b-3", user_id="u-1", scenario="new.arrivals"),  # not granted to order
        shipped("b-4", priority=500),
        shipped("b-0"),  # the same request again: the same answer
    ]
    response = await api.push.PushBatch(push_pb2.PushBatchRequest(requests=requests), metadata=auth("order"))
    answers = list(response.responses)
    assert len(answers) == 6
    assert answers[0].outcome == types_pb2.ACCEPTED and not answers[0].HasField("error")
    assert answers[1].error.code == "INVALID_ARGUMENT"
    assert answers[1].error.field == "requests[1].params"
    assert "needs carrier, tracking_no" in answers[1].error.message
    assert answers[2].reason == types_pb2.NO_REACHABLE_CHANNEL
    assert answers[3].error.code == "PERMISSION_DENIED"
    assert answers[4].error.field == "requests[4].priority"
    assert answers[5].message_id == answers[0].message_id
    assert not answers[1].message_id


async def test_batch_size_limits(api: Api) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.push.PushBatch(push_pb2.PushBatchRequest(), metadata=auth("order"))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "requests: is empty" in (info.value.details() or "")
    too_many = [shipped(f"r-{i}") for i in range(1001)]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.push.PushBatch(push_pb2.PushBatchRequest(requests=too_many), metadata=auth("order"))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "has 1001; at most 1000" in (info.value.details() or "")


async def test_a_full_batch_of_1000(api: Api) -> None:
    for i in range(50):
        await api.add_follower(f"u-{i}")
    # 20 a user: under the basic safety cap (60 an hour), and concurrent for each user.
    requests = [shipped(f"r-{i}", user_id=f"u-{i % 50}") for i in range(1000)]
    response = await api.push.PushBatch(push_pb2.PushBatchRequest(requests=requests), metadata=auth("logistics"))
    assert len(response.responses) == 1000
    assert all(r.outcome == types_pb2.ACCEPTED for r in response.responses)
    assert len({r.message_id for r in response.responses}) == 1000


async def test_batch_needs_authentication(api: Api) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.push.PushBatch(push_pb2.PushBatchRequest(requests=[shipped()]))
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_a_large_batch_decides_each_users_claims_in_order(api: Api) -> None:
    """A batch over 128 items is decided in parts at once; each user's claims stay in
    one part, so they are decided one after another in request order (the first 60
    fit the basic safety cap of 60 an hour, the rest are capped) and no part's commit
    meets another's change of the same user."""
    users = [f"u-{i}" for i in range(7)]
    for user in users:
        await api.add_follower(user)
    requests = [shipped(f"big-{i}", user_id=users[i % len(users)]) for i in range(7 * 70)]
    response = await api.push.PushBatch(push_pb2.PushBatchRequest(requests=requests), metadata=auth("logistics"))
    answers = list(response.responses)
    for index, user in enumerate(users):
        mine = [a for i, a in enumerate(answers) if i % len(users) == index]
        assert [a.outcome for a in mine] == [types_pb2.ACCEPTED] * 60 + [types_pb2.SUPPRESSED] * 10, user
        assert {a.reason for a in mine[60:]} == {types_pb2.SAFETY_CAP}
    conflicts = api.gateway.metrics.registry.get_sample_value("herald_state_conflicts_total")
    assert not conflicts
