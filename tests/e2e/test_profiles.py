"""ProfileService end to end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask

from herald.v1 import profile_pb2, types_pb2
from tests.e2e.conftest import OPENID, Api, auth
from tests.e2e.test_push import ts


async def test_upsert_get_and_tier(api: Api) -> None:
    rfm = profile_pb2.RfmInputs(
        last_purchase_at=ts(datetime.now(UTC) - timedelta(days=3)), orders_in_period=8, spend_in_period_minor=500_000
    )
    user = await api.add_user(
        "u-1",
        wechat=profile_pb2.WeChatIdentity(openid=OPENID, unionid="uNiOnId123", following=True),
        phone="+8613800138000",
        email="li.lei@example.com",
        timezone="Asia/Shanghai",
        locale="zh-CN",
        rfm=rfm,
        device_tokens=[
            profile_pb2.DeviceToken(token="fcm-token-1", platform=profile_pb2.ANDROID, provider=profile_pb2.FCM)
        ],
    )
    assert user.rfm_tier == "champion"
    got = await api.profiles.GetUser(profile_pb2.GetUserRequest(user_id="u-1"), metadata=auth("growth"))
    assert got.wechat.openid == OPENID and got.wechat.following
    assert got.device_tokens[0].provider == profile_pb2.FCM
    assert got.rfm.spend_in_period_minor == 500_000
    assert got.HasField("updated_at")


async def test_a_user_who_never_bought_is_new(api: Api) -> None:
    user = await api.add_user("u-new", phone="+8613800138000")
    assert user.rfm_tier == "new"


async def test_update_mask_replaces_only_named_sections(api: Api) -> None:
    await api.add_user("u-1", phone="+8613800138000", email="a@example.com")
    request = profile_pb2.UpsertUserRequest(
        user=profile_pb2.User(user_id="u-1", email="b@example.com"), update_mask=FieldMask(paths=["email"])
    )
    user = await api.profiles.UpsertUser(request, metadata=auth("order"))
    assert user.phone == "+8613800138000" and user.email == "b@example.com"


BAD_USERS = [
    ("phone", profile_pb2.User(user_id="u", phone="13800138000"), "user.phone: must be E.164"),
    ("email", profile_pb2.User(user_id="u", email="not-an-email"), "user.email: is not an email address"),
    ("timezone", profile_pb2.User(user_id="u", timezone="Beijing"), "user.timezone: is not an IANA time zone"),
    ("openid", profile_pb2.User(user_id="u", wechat=profile_pb2.WeChatIdentity(openid="o!")), "user.wechat.openid"),
    ("user id", profile_pb2.User(user_id="a b"), "user.user_id: must be 1-128 characters"),
    ("no user id", profile_pb2.User(), "user.user_id: is required"),
    ("locale", profile_pb2.User(user_id="u", locale="zh_CN!"), "user.locale: must be a BCP 47 tag"),
    (
        "device platform",
        profile_pb2.User(user_id="u", device_tokens=[profile_pb2.DeviceToken(token="t", provider=profile_pb2.FCM)]),
        "user.device_tokens[0].platform: is required",
    ),
    (
        "future purchase",
        profile_pb2.User(
            user_id="u", rfm=profile_pb2.RfmInputs(last_purchase_at=ts(datetime.now(UTC) + timedelta(days=2)))
        ),
        "user.rfm.last_purchase_at: is in the future",
    ),
    (
        "negative spend",
        profile_pb2.User(user_id="u", rfm=profile_pb2.RfmInputs(spend_in_period_minor=-1)),
        "must be 0 or more",
    ),
]


@pytest.mark.parametrize(("name", "user", "needle"), BAD_USERS, ids=[b[0] for b in BAD_USERS])
async def test_bad_profiles_are_refused(api: Api, name: str, user: profile_pb2.User, needle: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.profiles.UpsertUser(profile_pb2.UpsertUserRequest(user=user), metadata=auth("order"))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (info.value.details() or "")
    assert "13800138000" not in (info.value.details() or "")  # never echo personal data


async def test_unknown_mask_path(api: Api) -> None:
    request = profile_pb2.UpsertUserRequest(
        user=profile_pb2.User(user_id="u"), update_mask=FieldMask(paths=["rfm_tier"])
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.profiles.UpsertUser(request, metadata=auth("order"))
    assert "update_mask: unknown path 'rfm_tier'" in (info.value.details() or "")


async def test_profile_grants(api: Api) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.profiles.GetUser(profile_pb2.GetUserRequest(user_id="u"), metadata=auth("logistics"))
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "may not read profiles" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.profiles.GetUser(profile_pb2.GetUserRequest(user_id="nobody"), metadata=auth("order"))
    assert info.value.code() is grpc.StatusCode.NOT_FOUND


async def test_interactions_open_the_cs_window(api: Api) -> None:
    await api.add_follower()
    response = await api.profiles.RecordInteraction(
        profile_pb2.RecordInteractionRequest(user_id="u-1", kind=profile_pb2.USER_MESSAGE), metadata=auth("order")
    )
    until = response.cs_window_open_until.ToDatetime(tzinfo=UTC)
    assert timedelta(hours=47) < until - datetime.now(UTC) <= timedelta(hours=48)
    assert response.cs_window_quota == 5
    paid = await api.profiles.RecordInteraction(
        profile_pb2.RecordInteractionRequest(user_id="u-1", kind=profile_pb2.PAYMENT), metadata=auth("order")
    )
    assert paid.cs_window_quota == -1  # payment: no limit, and it outranks the 5-message window
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.profiles.RecordInteraction(
            profile_pb2.RecordInteractionRequest(user_id="ghost", kind=profile_pb2.FOLLOW), metadata=auth("order")
        )
    assert info.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.profiles.RecordInteraction(
            profile_pb2.RecordInteractionRequest(user_id="u-1"), metadata=auth("order")
        )
    assert "kind: is required" in (info.value.details() or "")


async def test_opt_out_rules(api: Api) -> None:
    await api.add_follower()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.profiles.SetOptOut(
            profile_pb2.SetOptOutRequest(user_id="u-1", category=types_pb2.BASIC, opted_out=True),
            metadata=auth("order"),
        )
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "cannot be opted out of" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.profiles.SetOptOut(
            profile_pb2.SetOptOutRequest(user_id="u-1", opted_out=True), metadata=auth("order")
        )
    assert "give a category, a channel, or both" in (info.value.details() or "")
    user = await api.profiles.SetOptOut(
        profile_pb2.SetOptOutRequest(
            user_id="u-1", category=types_pb2.MARKETING, channel=types_pb2.SMS, opted_out=True, source="sms-stop"
        ),
        metadata=auth("order"),
    )
    assert [(o.category, o.channel, o.source) for o in user.opt_outs] == [
        (types_pb2.MARKETING, types_pb2.SMS, "sms-stop")
    ]
    user = await api.profiles.SetOptOut(
        profile_pb2.SetOptOutRequest(
            user_id="u-1", category=types_pb2.MARKETING, channel=types_pb2.SMS, opted_out=False
        ),
        metadata=auth("order"),
    )
    assert list(user.opt_outs) == []


async def test_upsert_users_batch_reports_each_item(api: Api) -> None:
    requests = [
        profile_pb2.UpsertUserRequest(user=profile_pb2.User(user_id="u-a", phone="+8613800138000")),
        profile_pb2.UpsertUserRequest(user=profile_pb2.User(user_id="u-b", phone="bad")),
    ]
    response = await api.profiles.UpsertUsers(
        profile_pb2.UpsertUsersRequest(requests=requests), metadata=auth("growth")
    )
    assert response.results[0].user.user_id == "u-a" and not response.results[0].error_code
    assert response.results[1].error_code == "INVALID_ARGUMENT"
    assert "user.phone" in response.results[1].error_message


async def test_tags_and_attributes_round_trip_and_replace_as_sections(api: Api) -> None:
    user = profile_pb2.User(
        user_id="u-t", phone="+8613800138000", tags=["mom_baby", "城市:杭州", "mom_baby"], attributes={"city": "杭州"}
    )
    got = await api.profiles.UpsertUser(profile_pb2.UpsertUserRequest(user=user), metadata=auth("order"))
    assert list(got.tags) == ["mom_baby", "城市:杭州"]  # a set, sorted
    assert dict(got.attributes) == {"city": "杭州"}
    # Only tags named: the phone and attributes stay.
    retag = profile_pb2.UpsertUserRequest(
        user=profile_pb2.User(user_id="u-t", tags=["vip"]), update_mask=FieldMask(paths=["tags"])
    )
    await api.profiles.UpsertUser(retag, metadata=auth("order"))
    got = await api.profiles.GetUser(profile_pb2.GetUserRequest(user_id="u-t"), metadata=auth("growth"))
    assert list(got.tags) == ["vip"] and got.attributes["city"] == "杭州" and got.phone == "+8613800138000"
    # An empty mask with no tags does not wipe them.
    await api.profiles.UpsertUser(
        profile_pb2.UpsertUserRequest(user=profile_pb2.User(user_id="u-t", email="a@example.com")),
        metadata=auth("order"),
    )
    got = await api.profiles.GetUser(profile_pb2.GetUserRequest(user_id="u-t"), metadata=auth("growth"))
    assert list(got.tags) == ["vip"] and got.email == "a@example.com"


BAD_LABELS = [
    ("space in tag", profile_pb2.User(user_id="u", tags=["mom baby"]), "user.tags: 'mom baby' is not a tag"),
    ("long tag", profile_pb2.User(user_id="u", tags=["x" * 65]), "is not a tag"),
    ("newline after tag", profile_pb2.User(user_id="u", tags=["vip\n"]), "is not a tag"),
    ("attribute key", profile_pb2.User(user_id="u", attributes={"City": "x"}), "user.attributes: key 'City'"),
    ("attribute value", profile_pb2.User(user_id="u", attributes={"city": "a\nb"}), "user.attributes.city"),
    ("too many tags", profile_pb2.User(user_id="u", tags=[f"t{n}" for n in range(300)]), "at most"),
]


@pytest.mark.parametrize(("name", "user", "needle"), BAD_LABELS, ids=[b[0] for b in BAD_LABELS])
async def test_bad_tags_and_attributes_are_refused(api: Api, name: str, user: profile_pb2.User, needle: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.profiles.UpsertUser(profile_pb2.UpsertUserRequest(user=user), metadata=auth("order"))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert needle in (info.value.details() or "")


async def test_the_tag_grant_sets_labels_but_not_contacts(api: Api) -> None:
    await api.add_user("u-g", phone="+8613800138000")
    tag = profile_pb2.UpsertUserRequest(
        user=profile_pb2.User(user_id="u-g", tags=["double11"], attributes={"province": "浙江"}),
        update_mask=FieldMask(paths=["tags", "attributes"]),
    )
    got = await api.profiles.UpsertUser(tag, metadata=auth("marketing"))
    assert list(got.tags) == ["double11"] and got.phone == "+8613800138000"
    contact = profile_pb2.UpsertUserRequest(
        user=profile_pb2.User(user_id="u-g", phone="+8613900139000"), update_mask=FieldMask(paths=["phone"])
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.profiles.UpsertUser(contact, metadata=auth("marketing"))
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "may not write" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.profiles.UpsertUser(tag, metadata=auth("logistics"))
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
