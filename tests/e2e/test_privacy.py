"""ProfileService.ExportUser and DeleteUser end to end (privacy access and erasure
requests), on both stores."""

from __future__ import annotations

import json

import grpc
import pytest
import redis

from gateway.masking import user_ref
from herald.v1 import profile_pb2, push_pb2, types_pb2
from tests.e2e.conftest import OPENID, Api, auth
from tests.e2e.test_push import shipped, wait_status
from tests.store.test_erasure import everything


async def a_users_life(api: Api) -> list[str]:
    """A follower with an opt-out and an interaction, a message from two units (both
    delivered), and someone else: the user's message ids, newest first."""
    await api.add_follower("u-1")
    await api.add_user("u-2", phone="+8613800138001")
    await api.profiles.SetOptOut(
        profile_pb2.SetOptOutRequest(user_id="u-1", category=types_pb2.MARKETING, opted_out=True, source="user"),
        metadata=auth("order"),
    )
    await api.profiles.RecordInteraction(
        profile_pb2.RecordInteractionRequest(user_id="u-1", kind=profile_pb2.MENU_CLICK), metadata=auth("order")
    )
    first = await api.push.Push(shipped("r-1"), metadata=auth("order"))
    arrived = push_pb2.PushRequest(
        request_id="l-1", user_id="u-1", scenario="delivery.arrived", params={"order_id": "O-1001"}
    )
    second = await api.push.Push(arrived, metadata=auth("logistics"))
    await api.push.Push(shipped("r-2", user_id="u-2"), metadata=auth("order"))
    assert (await wait_status(api, first.message_id, "delivered")).status == "delivered"
    assert (await wait_status(api, second.message_id, "delivered", bu="logistics")).status == "delivered"
    return [second.message_id, first.message_id]


async def export(api: Api, user_id: str = "u-1", bu: str = "order") -> profile_pb2.ExportUserResponse:
    return await api.profiles.ExportUser(profile_pb2.ExportUserRequest(user_id=user_id), metadata=auth(bu))


async def test_export_holds_the_profile_the_messages_of_every_unit_and_the_state(api: Api) -> None:
    ids = await a_users_life(api)
    got = await export(api)
    assert got.user.user_id == "u-1" and got.user.phone == "+8613800138000" and got.user.wechat.openid == OPENID
    assert [o.category for o in got.user.opt_outs] == [types_pb2.MARKETING]
    assert [i.kind for i in got.user.recent_interactions] == [profile_pb2.MENU_CLICK]
    assert got.user.rfm_tier
    assert [m.message_id for m in got.messages] == ids  # newest first, order's and logistics'
    assert {m.business_unit for m in got.messages} == {"order", "logistics"}
    assert all(m.timeline and m.trace for m in got.messages)
    assert {r.message_id for r in got.reservations} == set(ids)
    assert all(r.committed and r.business_unit in ("order", "logistics") for r in got.reservations)
    # JSON-able as it is: what `herald users export` prints.
    from google.protobuf import json_format

    as_json = json.loads(json_format.MessageToJson(got))
    assert as_json["user"]["userId"] == "u-1" and len(as_json["messages"]) == 2


async def test_export_and_delete_need_the_write_grant(api: Api) -> None:
    await api.add_follower("u-1")
    for bu, wording in (("marketing", "may not write profiles"), ("logistics", "may not write profiles")):
        for call in (
            api.profiles.ExportUser(profile_pb2.ExportUserRequest(user_id="u-1"), metadata=auth(bu)),
            api.profiles.DeleteUser(profile_pb2.DeleteUserRequest(user_id="u-1"), metadata=auth(bu)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
            assert wording in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await export(api, "nobody")
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await export(api, "a b")
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_delete_erases_the_user_everywhere_and_counts_it(api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.logs import configure

    ids = await a_users_life(api)
    configure("INFO", json=True)
    erased = await api.profiles.DeleteUser(profile_pb2.DeleteUserRequest(user_id="u-1"), metadata=auth("growth"))
    assert (erased.profile, erased.openid_index, erased.message_index, erased.messages) == (1, 1, 1, 2)
    assert erased.audience_indexes == 1  # the index of all users
    assert erased.answers == 4  # the two messages' answers and their requests' id marks
    # Nothing of the user answers any more.
    for call in (
        api.profiles.GetUser(profile_pb2.GetUserRequest(user_id="u-1"), metadata=auth("order")),
        api.push.GetMessage(push_pb2.GetMessageRequest(message_id=ids[1]), metadata=auth("order")),
        api.profiles.ExportUser(profile_pb2.ExportUserRequest(user_id="u-1"), metadata=auth("order")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() is grpc.StatusCode.NOT_FOUND
    listed = await api.push.ListMessages(push_pb2.ListMessagesRequest(user_id="u-1"), metadata=auth("order"))
    assert list(listed.messages) == []
    assert await api.gateway.users.by_openid(OPENID) is None
    # The other user is whole; a second request finds nothing to remove.
    assert (await export(api, "u-2")).messages
    again = await api.profiles.DeleteUser(profile_pb2.DeleteUserRequest(user_id="u-1"), metadata=auth("order"))
    assert again == profile_pb2.DeleteUserResponse()
    # The log says who asked and what went, naming the user by their log id only.
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    deleted = [e for e in events if e.get("event") == "user_deleted"]
    assert deleted[0]["user_ref"] == user_ref("u-1") and deleted[0]["bu"] == "growth"
    assert deleted[0]["removed"]["messages"] == 2
    assert not any("u-1" in json.dumps(e) for e in deleted)
    if api.gateway.settings.redis_url:
        dump = "\n".join(everything(redis.Redis.from_url(api.gateway.settings.redis_url)))
        assert "u-2" in dump
        for personal in ("u-1", OPENID, "13800138000"):
            assert personal not in dump
