"""Bad input at every HTTP route of a real gateway: the answer is 4xx, never 5xx; a
refused request records nothing (no kill switch, no audit entry, no opt-out, no
interaction, no following change, no timeline event); a refusal repeats no secret and
no personal data.

The requests go over a plain socket, so they can carry what HTTP clients refuse to
send (header bytes that are not UTF-8, a body in pieces). WeChat signatures are
computed here the way WeChat computes them.

First a table per bug found (each failed before its fix), then property tests that
throw generated junk at each route, with and without valid credentials.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import struct
import time
import unicodedata
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape

import pytest
import redis
import yaml
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels.wechat_callback import encrypt, signature
from gateway.app import Gateway
from gateway.metrics import fresh_metrics
from gateway.unsubscribe import Unsubscribe
from gateway.values.domain import Category, Channel
from herald.v1 import profile_pb2
from tests.e2e.channels_setup import AES_KEY, CALLBACK_TOKEN, Fakes, policies_for, settled
from tests.e2e.conftest import OPENID, Api, auth, open_api, settings_for
from tests.e2e.test_push import shipped

ADMIN_TOKEN = "admin-token-for-http-input"
SMS_TOKEN = "receipt-token-for-http-input"
PHONE = "+8613800138000"
EMAIL = "mei.lin@example.org"
SECRETS = (ADMIN_TOKEN, SMS_TOKEN, CALLBACK_TOKEN, AES_KEY)
PERSONAL = (OPENID, PHONE, EMAIL)
BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
SWITCH = {"scope": "campaign", "value": "c-double11.presale", "reason": "wrong price", "actor": "ops-wang"}


# --- a gateway, and a client that sends exactly the bytes it is given ---------------


@dataclass
class Edge:
    api: Api
    fake: Fakes
    sms_message: str  # a delivered SMS message and its delivery id, for receipts
    sms_out_id: str
    unsubscribe: str  # a valid one-click token for u-1 (marketing email)

    @property
    def gateway(self) -> Gateway:
        return self.api.gateway

    @property
    def port(self) -> int:
        return self.gateway.public_port  # one listener: no public_listen set

    @property
    def admin_port(self) -> int:
        return self.gateway.admin_port


@asynccontextmanager
async def edge_gateway(tmp_path: Path, fake: Fakes, redis_url: str = "", **environ: str) -> AsyncIterator[Edge]:
    """The fakes-wired gateway with the admin API and an SMS receipt token on, a
    follower u-1 (openid, phone, email) and a delivered SMS to u-2."""
    policy_dir = policies_for(tmp_path, fake)
    path = policy_dir / "channels.yaml"
    data = yaml.safe_load(path.read_text())
    data["providers"]["aliyun_sms"]["receipt_token_env"] = "HERALD_ALIYUN_RECEIPT_TOKEN"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    settings_ = settings_for(tmp_path, redis_url, policy_dir).replace(admin_token=ADMIN_TOKEN)
    env = {**fake.environ(), "HERALD_ALIYUN_RECEIPT_TOKEN": SMS_TOKEN, **environ}
    gateway = Gateway(settings_, metrics=fresh_metrics(), environ=env)
    await gateway.start()
    api = await open_api(gateway)
    try:
        wechat = profile_pb2.WeChatIdentity(openid=OPENID, following=True)
        await api.add_user("u-1", wechat=wechat, phone=PHONE, email=EMAIL)
        await api.add_user("u-2", phone="+8613900139000")
        answer = await api.push.Push(shipped("r-sms", "u-2"), metadata=auth("order"))
        assert (await settled(api, answer.message_id)).status == "delivered"
        assert gateway.tokens is not None
        token = gateway.tokens.issue(Unsubscribe("u-1", Category.MARKETING, Channel.EMAIL), gateway.clock.now())
        yield Edge(api, fake, answer.message_id, str(fake.sms.sends[-1]["OutId"]), token)
    finally:
        await api.channel.close()
        await gateway.stop(grace=1.0)


@pytest.fixture
async def edge(tmp_path: Path, fake: Fakes) -> AsyncIterator[Edge]:
    async with edge_gateway(tmp_path, fake) as running:
        yield running


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


def request_bytes(method: str, target: str, body: bytes = b"", headers: Mapping[str, str | bytes] = {}) -> bytes:
    lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    lines.append(f"Content-Length: {len(body)}".encode())
    for name, value in headers.items():
        lines.append(name.encode() + b": " + (value if isinstance(value, bytes) else value.encode()))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def send_raw(port: int, *pieces: bytes, pause: float = 0.0) -> Answer:
    """Send the pieces as they are (pausing between them) and read the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i, piece in enumerate(pieces):
            if i and pause:
                await asyncio.sleep(pause)
            writer.write(piece)
            await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    status_line, _, rest = raw.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return Answer(int(status_line.split()[1]), payload)


async def send(
    port: int, method: str, target: str, body: bytes = b"", headers: Mapping[str, str | bytes] = {}
) -> Answer:
    return await send_raw(port, request_bytes(method, target, body, headers))


def query(*pairs: tuple[str, str]) -> str:
    """A query string that keeps order and repeats (each value percent-encoded as UTF-8)."""
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)


def dumped(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()


def bearer(token: str = ADMIN_TOKEN) -> dict[str, str | bytes]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


async def recorded(edge: Edge) -> tuple[object, ...]:
    """Everything a request could record, read from the store."""
    store = edge.gateway.store
    return (
        sorted(await store.kill_switches(), key=lambda s: s.switch_id),
        await store.kill_audit(1000),
        await store.get_user("u-1"),
        await store.get_user("u-2"),
        (await store.get_messages([edge.sms_message]))[0],
    )


def plain_text(text: str) -> bool:
    """No control characters, line breaks or bidirectional controls."""
    return not any(unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in BIDI for c in text)


def assert_private(request: bytes, answer: Answer) -> None:
    """No answer repeats a secret the request did not carry; no refusal repeats
    personal data, even the request's own."""
    for secret in SECRETS:
        if secret.encode() not in request:
            assert secret.encode() not in answer.body, f"the answer carries a secret: {answer.text[:200]}"
    if answer.status >= 400:
        for value in PERSONAL:
            assert value.encode() not in answer.body, f"the refusal repeats personal data: {answer.text[:200]}"


# --- WeChat helpers -----------------------------------------------------------------


def signed(timestamp: str = "1731300000", nonce: str = "n0nce", *extra: str) -> list[tuple[str, str]]:
    name = "msg_signature" if extra else "signature"
    return [("timestamp", timestamp), ("nonce", nonce), (name, signature(CALLBACK_TOKEN, timestamp, nonce, *extra))]


def event_xml(fields: Mapping[str, str]) -> bytes:
    return ("<xml>" + "".join(f"<{k}>{escape(v)}</{k}>" for k, v in fields.items()) + "</xml>").encode()


def follow_event(kind: str = "unsubscribe", created: str | None = None) -> dict[str, str]:
    return {
        "ToUserName": "gh_shop",
        "FromUserName": OPENID,
        "CreateTime": created or str(int(time.time())),
        "MsgType": "event",
        "Event": kind,
    }


def seal(plain: bytes, pad_to: int = 32) -> str:
    """Encrypt any plaintext the way safe mode does (AES-256-CBC, PKCS#7 to 32 bytes),
    so that it decrypts cleanly to exactly ``plain``: for payloads that lie."""
    key = base64.b64decode(AES_KEY + "=")
    pad = pad_to - len(plain) % pad_to
    padded = plain + bytes([pad]) * pad
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode()


def safe_body(encrypted: str) -> bytes:
    return f"<xml><ToUserName>gh_shop</ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>".encode()


async def post_safe(edge: Edge, encrypted: str) -> Answer:
    """A safe-mode message, correctly signed over its Encrypt."""
    params = [*signed("1731300000", "n1", encrypted), ("encrypt_type", "aes")]
    return await send(edge.port, "POST", f"/webhooks/wechat?{query(*params)}", safe_body(encrypted))


async def profile(edge: Edge) -> profile_pb2.User:
    return await edge.api.profiles.GetUser(profile_pb2.GetUserRequest(user_id="u-1"), metadata=auth("order"))


# === the bugs, one table each (one gateway per table: each case is checked in turn) ===

NON_ASCII_SIGNATURES = ["é" * 40, "签名不对", "\u00ff", "0" * 39 + "\u0660"]


async def test_a_non_ascii_signature_is_refused_not_a_crash(edge: Edge) -> None:
    """hmac.compare_digest raised TypeError on non-ASCII str: 500 before any check."""
    before = await recorded(edge)
    stamp = [("timestamp", "1731300000"), ("nonce", "n0nce")]
    encrypted = encrypt(event_xml(follow_event()), AES_KEY, edge.fake.wechat.appid)
    for given_signature in NON_ASCII_SIGNATURES:
        url_check = f"/webhooks/wechat?{query(*stamp, ('signature', given_signature), ('echostr', 'e1'))}"
        plain = f"/webhooks/wechat?{query(*stamp, ('signature', given_signature))}"
        safe = f"/webhooks/wechat?{query(*stamp, ('encrypt_type', 'aes'), ('msg_signature', given_signature))}"
        for method, target, body in (
            ("GET", url_check, b""),
            ("POST", plain, event_xml(follow_event())),
            ("POST", safe, safe_body(encrypted)),
        ):
            answer = await send(edge.port, method, target, body)
            assert (answer.status, answer.text) == (403, "signature does not match"), (target, answer)
    assert await recorded(edge) == before
    assert (await profile(edge)).wechat.following


CREATE_TIMES = [
    "1" + "0" * 19,  # 20 digits: datetime.fromtimestamp overflowed (500)
    "9" * 20,
    "-" + "1" * 19,
    "99999999999",  # the year 5138: later than now
    "١٧٣١٣٠٠٠٠٠",  # Arabic-Indic digits: int() reads them, WeChat never sends them
    "1e10",
    "",
]


async def test_a_create_time_out_of_range_is_taken_as_now(edge: Edge) -> None:
    target = f"/webhooks/wechat?{query(*signed())}"
    for created in CREATE_TIMES:
        before = datetime.now(UTC)
        answer = await send(edge.port, "POST", target, event_xml(follow_event("subscribe", created)))
        assert (answer.status, answer.text) == (200, "success"), (created, answer)
        latest = (await profile(edge)).recent_interactions[0]
        assert latest.kind == profile_pb2.FOLLOW
        assert before - timedelta(seconds=1) <= latest.at.ToDatetime(UTC) <= datetime.now(UTC), created
    # More digits than int() converts: not WeChat's, refused before it is read.
    before_refusal = await recorded(edge)
    answer = await send(edge.port, "POST", target, event_xml(follow_event("subscribe", "1" * 200)))
    assert (answer.status, answer.text) == (400, "CreateTime is longer than 128 characters: not a WeChat event")
    assert await recorded(edge) == before_refusal


async def test_a_create_time_in_range_is_kept(edge: Edge) -> None:
    at = int(time.time()) - 3600
    answer = await send(
        edge.port, "POST", f"/webhooks/wechat?{query(*signed())}", event_xml(follow_event("subscribe", str(at)))
    )
    assert answer.status == 200
    [follow] = (await profile(edge)).recent_interactions
    assert follow.at.seconds == at


EXPIRIES: list[tuple[dict[str, Any], str]] = [
    ({"expires_in": "10000000000d"}, "'expires_in': '10000000000d' is longer than 100 years"),
    ({"expires_in": "99999999999999999999w"}, "is longer than 100 years"),
    ({"expires_in": "36526d"}, "is longer than 100 years"),
    ({"expires_in": "1" + "0" * 50 + "s"}, "is longer than 100 years"),
    ({"expires_in": "1" + "0" * 5000 + "s"}, "'expires_in' is longer than 64 characters"),
    ({"expires_in": "٣d"}, "'expires_in': not a duration"),
    ({"expires_in": ""}, "'expires_in': not a duration"),
    ({"expires_in": 0}, "'expires_in' must be a string"),  # was ignored: a switch that never expires
    ({"expires_in": 6}, "'expires_in' must be a string"),
    ({"expires_in": ["6h"]}, "'expires_in' must be a string"),
    ({"expires_in": {"h": 6}}, "'expires_in' must be a string"),
    ({"expires_in": 1e308}, "'expires_in' must be a string"),
    ({"expires_at": "9999-12-31T23:59:59-23:59"}, "'expires_at' is more than 100 years away"),
    ({"expires_at": "9999-12-31T23:59:59+00:00"}, "'expires_at' is more than 100 years away"),
    ({"expires_at": 253402300799}, "'expires_at' must be a string"),
    ({"expires_at": ""}, "'expires_at' must be an ISO 8601 time"),
    ({"expires_at": "0001-01-01T00:00:00+23:59"}, "'expires_at' is in the past"),
]


async def test_an_expiry_out_of_range_is_refused(edge: Edge) -> None:
    """timedelta(seconds=10000000000 * 86400) overflowed (500)."""
    for expiry, says in EXPIRIES:
        answer = await send(edge.admin_port, "POST", "/admin/kill-switches", dumped({**SWITCH, **expiry}), bearer())
        assert answer.status == 400 and says in json.loads(answer.body)["error"], (str(expiry)[:80], answer)
    assert await edge.gateway.store.kill_switches() == []
    assert await edge.gateway.store.kill_audit(10) == []
    answer = await send(
        edge.admin_port, "POST", "/admin/kill-switches", dumped({**SWITCH, "expires_in": "36525d"}), bearer()
    )
    assert answer.status == 201
    expires = datetime.fromisoformat(json.loads(answer.body)["switch"]["expires_at"])
    assert expires - datetime.now(UTC) > timedelta(days=36524)


CONTROLS = ["\x00", "\x1b[31m", "\n", "\r", "\t", "\x7f", "\x85", "\u2028", "\u2029", "\u202e", "\u2066"]


async def test_control_characters_are_refused_naming_the_field(edge: Edge) -> None:
    for field in ("value", "reason", "actor"):
        for char in CONTROLS:
            for text in (f"c-double11{char}presale", f"{char}x", f"x{char}"):
                answer = await send(
                    edge.admin_port, "POST", "/admin/kill-switches", dumped({**SWITCH, field: text}), bearer()
                )
                error = json.loads(answer.body)["error"]
                assert answer.status == 400, (field, text, answer)
                assert error.startswith(f"'{field}' contains a control character (U+{ord(char[0]):04X})"), error
    assert await edge.gateway.store.kill_switches() == []
    assert await edge.gateway.store.kill_audit(10) == []

    created = await send(edge.admin_port, "POST", "/admin/kill-switches", dumped(SWITCH), bearer())
    switch_id = json.loads(created.body)["switch"]["id"]
    for field in ("actor", "note"):
        for char in CONTROLS:
            body = dumped({"actor": "ops-wang", "note": "price fixed", field: f"ops{char}wang"})
            answer = await send(edge.admin_port, "DELETE", f"/admin/kill-switches/{switch_id}", body, bearer())
            assert answer.status == 400, (field, char, answer)
            assert json.loads(answer.body)["error"].startswith(f"'{field}' contains a control character")
    assert [s.switch_id for s in await edge.gateway.store.kill_switches()] == [switch_id]
    assert [e.action for e in await edge.gateway.store.kill_audit(10)] == ["set"]

    # Plain text in any script, emoji included, is kept as it is.
    reason, actor = "价格错误 — wrong price 👩‍💻", "运维-王"
    body = dumped({**SWITCH, "value": "c-2", "reason": reason, "actor": actor})
    assert (await send(edge.admin_port, "POST", "/admin/kill-switches", body, bearer())).status == 201
    assert {(s.reason, s.actor) for s in await edge.gateway.store.kill_switches() if s.value == "c-2"} == {
        (reason, actor)
    }


# === what else turned up going over the routes ======================================


async def test_an_admin_token_that_is_not_utf8_is_refused(edge: Edge) -> None:
    """aiohttp keeps such bytes as surrogates; .encode() raised (500)."""
    for header in (b"Bearer \xff\xfe", b"Bearer \xc3\xa9", b"\x80", b"Bearer " + ADMIN_TOKEN.encode() + b"\xff"):
        answer = await send(edge.admin_port, "POST", "/admin/kill-switches", dumped(SWITCH), {"Authorization": header})
        assert answer.status == 401 and "admin token" in json.loads(answer.body)["error"], (header, answer)
    assert await edge.gateway.store.kill_switches() == []


async def test_an_unsubscribe_link_that_is_not_ours_is_refused(edge: Edge) -> None:
    """A non-ASCII signature made hmac.compare_digest raise (500)."""
    before = await recorded(edge)
    body_part = edge.unsubscribe.partition(".")[0]
    for tail in (".%C3%A9", "%C3%A9", ".%E7%AD%BE%E5%90%8D", "." + "x" * 3000, ".%00", "%00"):
        for token in (tail.lstrip("."), body_part + tail, edge.unsubscribe + tail):
            for method in ("GET", "POST"):
                answer = await send(edge.port, method, f"/unsubscribe/{token}", b"List-Unsubscribe=One-Click")
                assert answer.status == 400 and "not valid" in answer.text, (method, token[:80], answer.status)
    assert await recorded(edge) == before


async def test_a_webhook_body_in_pieces_is_read_whole(edge: Edge) -> None:
    """content.read(n) returns what has arrived so far: the rest was cut off."""
    body = event_xml(follow_event())
    head = request_bytes("POST", f"/webhooks/wechat?{query(*signed())}", body)[: -len(body)]
    answer = await send_raw(edge.port, head + body[:30], body[30:], pause=0.2)
    assert (answer.status, answer.text) == (200, "success")
    assert not (await profile(edge)).wechat.following

    receipt = [{"success": True, "err_code": "DELIVERED", "biz_id": "b-1", "out_id": edge.sms_out_id}]
    body = dumped(receipt)
    head = request_bytes("POST", f"/webhooks/aliyun-sms?token={SMS_TOKEN}", body)[: -len(body)]
    answer = await send_raw(edge.port, head + body[:20], body[20:], pause=0.2)
    assert answer.status == 200
    assert await receipt_codes(edge) == ["DELIVERED"]


async def test_an_over_long_body_is_413_and_records_nothing(edge: Edge) -> None:
    before = await recorded(edge)
    big = dumped([{"success": True, "biz_id": f"b-{i}", "out_id": edge.sms_out_id} for i in range(6000)])
    assert len(big) > 256 * 1024
    answer = await send(edge.port, "POST", f"/webhooks/aliyun-sms?token={SMS_TOKEN}", big)
    assert answer.status == 413 and "at most 262144 bytes" in answer.text
    padded = event_xml({**follow_event(), "Content": "x" * 300_000})
    answer = await send(edge.port, "POST", f"/webhooks/wechat?{query(*signed())}", padded)
    assert answer.status == 413
    assert await recorded(edge) == before


def plaintext(xml: bytes, appid: str, declared: int | None = None) -> bytes:
    """What safe mode encrypts: 16 random bytes, the declared length, the XML, the appid."""
    return os.urandom(16) + struct.pack(">I", len(xml) if declared is None else declared) + xml + appid.encode()


LYING_PAYLOADS: list[tuple[str, Callable[[str], bytes], int, str]] = [
    ("empty", lambda appid: b"", 400, "less than the 16 random bytes"),  # struct.error: 500
    ("19 bytes", lambda appid: os.urandom(19), 400, "less than the 16 random bytes"),
    (
        "length 4G",
        lambda appid: plaintext(event_xml(follow_event()), appid, 2**32 - 1),
        400,
        "declares a message longer",
    ),
    (
        "length too long",
        lambda appid: plaintext(event_xml(follow_event()), appid, 10_000),
        400,
        "declares a message longer",
    ),
    ("length too short", lambda appid: plaintext(event_xml(follow_event()), appid, 3), 403, "another appid"),
    ("no xml", lambda appid: plaintext(b"", appid), 400, "not acceptable XML"),
    ("not utf-8", lambda appid: plaintext(b"\xff\xfe<xml/>", appid), 400, "not acceptable XML"),
    ("other app", lambda appid: plaintext(event_xml(follow_event()), "wx_someone_else"), 403, "another appid"),
]
SAFE_GARBAGE = [
    "",
    "not base64!",
    "QUJD",  # 3 bytes
    base64.b64encode(os.urandom(48)).decode(),  # decrypts to garbage
    base64.b64encode(b"\x00" * 32).decode(),
    "é" * 44,
    "A" * 10_000,
]


async def test_a_safe_mode_payload_that_lies_or_is_garbage_is_refused(edge: Edge) -> None:
    before = await recorded(edge)
    for name, payload, status, says in LYING_PAYLOADS:
        answer = await post_safe(edge, seal(payload(edge.fake.wechat.appid)))
        assert answer.status == status and says in answer.text, (name, answer)
    for encrypted in SAFE_GARBAGE:
        answer = await post_safe(edge, encrypted)
        assert answer.status == 400, (encrypted[:40], answer)
    assert await recorded(edge) == before


@pytest.mark.parametrize("key", ["short", AES_KEY + "A", AES_KEY[:-1] + "!", AES_KEY[:-1] + "é"])
async def test_an_encoding_aes_key_of_the_wrong_size_refuses_safe_mode_only(
    tmp_path: Path, fake: Fakes, key: str
) -> None:
    """base64 of the wrong size raised ValueError in every safe-mode request (500)."""
    async with edge_gateway(tmp_path, fake, HERALD_WECHAT_AES_KEY=key) as edge:
        encrypted = encrypt(event_xml(follow_event()), AES_KEY, edge.fake.wechat.appid)
        answer = await post_safe(edge, encrypted)
        assert answer.status == 400 and "no valid EncodingAESKey configured" in answer.text
        assert key.encode() not in answer.body
        assert (await profile(edge)).wechat.following
        plain = await send(edge.port, "POST", f"/webhooks/wechat?{query(*signed())}", event_xml(follow_event()))
        assert plain.status == 200 and not (await profile(edge)).wechat.following


async def test_an_over_long_key_field_is_refused(edge: Edge) -> None:
    before = await recorded(edge)
    for field in ("FromUserName", "MsgId", "Event", "MsgType", "CreateTime", "ToUserName"):
        fields = {**follow_event(), field: "1" * 129}
        answer = await send(edge.port, "POST", f"/webhooks/wechat?{query(*signed())}", event_xml(fields))
        assert (answer.status, answer.text) == (400, f"{field} is longer than 128 characters: not a WeChat event")
    assert await recorded(edge) == before


async def receipt_codes(edge: Edge) -> list[str]:
    message = (await edge.gateway.store.get_messages([edge.sms_message]))[0]
    assert message is not None
    return [e.provider_code for e in message.timeline if e.kind == "receipt"]


async def test_receipts_for_messages_we_do_not_keep_write_nothing(
    tmp_path: Path, fake: Fakes, clean_redis: str
) -> None:
    """On Redis, add_events for any m_... id wrote a timeline and a status of its own."""
    async with edge_gateway(tmp_path, fake, clean_redis) as edge:
        keys_before = set(redis.Redis.from_url(clean_redis).keys("herald:msg:*"))
        receipts = [
            {"success": False, "err_code": "X", "biz_id": "b-1", "out_id": "m_01JCNOTAMESSAGE0000000000.sms"},
            {"success": False, "err_code": "X", "biz_id": "b-2", "out_id": "m_}{.sms"},
            {"success": False, "err_code": "X", "biz_id": "b-3", "out_id": "m_" + "A" * 5000},
            {"success": False, "err_code": "X", "biz_id": {"a": 1}, "out_id": edge.sms_out_id},
            {"success": False, "err_code": "X", "biz_id": "b" * 129, "out_id": edge.sms_out_id},
            {"success": False, "err_code": "X", "biz_id": "b-6", "out_id": ["m_x"]},
        ]
        answer = await send(edge.port, "POST", f"/webhooks/aliyun-sms?token={SMS_TOKEN}", dumped(receipts))
        assert answer.status == 200
        assert set(redis.Redis.from_url(clean_redis).keys("herald:msg:*")) == keys_before
        assert await receipt_codes(edge) == []


async def test_a_receipt_code_is_kept_only_as_plain_text(edge: Edge) -> None:
    cases: list[tuple[Any, str]] = [
        ("DELIVERED", "DELIVERED"),
        ("IC:0001", "IC:0001"),
        ("\x00\x1b[2J", "FAILED"),
        ({"a": 1}, "FAILED"),
        ("", "FAILED"),
        ("x" * 100, "x" * 64),
    ]
    for i, (err_code, kept) in enumerate(cases):
        receipts = [{"success": False, "err_code": err_code, "biz_id": f"b-{i}", "out_id": edge.sms_out_id}]
        answer = await send(edge.port, "POST", f"/webhooks/aliyun-sms?token={SMS_TOKEN}", dumped(receipts))
        assert answer.status == 200
        assert (await receipt_codes(edge))[-1] == kept, err_code


async def test_a_wrong_receipt_token_is_refused(edge: Edge) -> None:
    before = await recorded(edge)
    receipts = dumped([{"success": False, "err_code": "X", "biz_id": "b-1", "out_id": edge.sms_out_id}])
    for token in ("", "wrong", "签名", SMS_TOKEN + "x", SMS_TOKEN[:-1]):
        answer = await send(edge.port, "POST", f"/webhooks/aliyun-sms?{query(('token', token))}", receipts)
        assert (answer.status, answer.text) == (403, "receipt token does not match"), token
    answer = await send(edge.port, "POST", "/webhooks/aliyun-sms", receipts)
    assert answer.status == 403
    assert await recorded(edge) == before


ODD_SWITCHES: list[tuple[Any, str]] = [
    ({**SWITCH, "expire_in": "6h"}, "unknown field 'expire_in'; the fields are: scope, value"),
    ({**SWITCH, "Expires_In": "6h"}, "unknown field (not a plain name)"),
    ({**SWITCH, OPENID: 1}, "unknown field (not a plain name)"),
    ({**SWITCH, "scope": "scenario", "value": OPENID}, "unknown scenario; one of:"),
    ({**SWITCH, "scope": "scenario", "value": EMAIL}, "unknown scenario; one of:"),
    ({**SWITCH, "scope": "bu", "value": "13800138000"}, "unknown bu; one of:"),
    ({**SWITCH, "scope": "bu", "value": PHONE}, "unknown bu; one of:"),
    ({**SWITCH, "scope": "scenario", "value": "no.such"}, "unknown scenario 'no.such'; one of:"),
    ({**SWITCH, "expires_in": PHONE}, "'expires_in': not a duration: write a number and a unit"),
    ({**SWITCH, "expires_at": EMAIL}, "'expires_at' must be an ISO 8601 time"),
    ({**SWITCH, "scope": ["campaign"]}, "'scope' must be one of"),
    ({**SWITCH, "scope": {"campaign": 1}}, "'scope' must be one of"),
    ({**SWITCH, "value": 42}, "'value' must be a string"),
    ({**SWITCH, "reason": {"text": "x"}}, "'reason' is required: a non-empty string"),
    ({**SWITCH, "actor": None}, "'actor' is required"),
    ({**SWITCH, "reason": "x" * 501}, "'reason' is longer than 500 characters"),
    ("a string", "the body must be a JSON object"),
    (None, "the body must be a JSON object"),
    ([SWITCH], "the body must be a JSON object"),
]
NOT_JSON = [b"\xff\xfe", b"{", b"[" * 5000, b'{"actor": "a"}x', b'"\\ud800"', b"\x00", b"", b"{}"]


async def test_odd_switch_bodies_are_refused_without_repeating_personal_data(edge: Edge) -> None:
    for body, says in ODD_SWITCHES:
        answer = await send(edge.admin_port, "POST", "/admin/kill-switches", dumped(body), bearer())
        assert answer.status == 400 and says in json.loads(answer.body)["error"], (body, answer)
        assert_private(dumped(body), answer)
    switch_path = "/admin/kill-switches/ks_01JCABCDEFGHJKMNPQRSTVWXYZ"
    for raw in NOT_JSON:
        for method, path in (("POST", "/admin/kill-switches"), ("DELETE", switch_path)):
            answer = await send(edge.admin_port, method, path, raw, bearer())
            assert answer.status == 400 and json.loads(answer.body)["error"], (method, raw[:20], answer)
    assert await edge.gateway.store.kill_switches() == []
    assert await edge.gateway.store.kill_audit(10) == []


async def test_odd_switch_ids_are_not_found_and_not_repeated(edge: Edge) -> None:
    await send(edge.admin_port, "POST", "/admin/kill-switches", dumped(SWITCH), bearer())
    before = await recorded(edge)
    generic = "no active kill switch with that id"
    for switch_id, says in [
        ("%00", generic),
        ("ks_%0A%1B", generic),
        ("%E2%80%AEks", generic),
        ("x" * 300, generic),
        (OPENID, generic),
        ("ks_nope", generic),
        ("audit", generic),
        ("ks_01JCABCDEFGHJKMNPQRSTVWXYZ", "no active kill switch 'ks_01JCABCDEFGHJKMNPQRSTVWXYZ'"),
    ]:
        body = dumped({"actor": "ops"})
        answer = await send(edge.admin_port, "DELETE", f"/admin/kill-switches/{switch_id}", body, bearer())
        assert answer.status == 404 and json.loads(answer.body)["error"].startswith(says), (switch_id, answer)
        assert_private(switch_id.encode(), answer)
    assert await recorded(edge) == before


AUDIT_LIMITS = [
    ("5", 200),
    ("0005", 200),
    ("1000", 200),
    ("0", 400),
    ("1001", 400),
    ("-1", 400),
    ("", 400),
    ("abc", 400),
    ("1e3", 400),
    ("٥", 400),  # int() reads other scripts' digits
    (" 5", 400),
    ("5_0", 400),
    ("9" * 5000, 400),  # int() refuses > 4300 digits, with its own message
]


async def test_the_audit_limit_is_a_plain_number(edge: Edge) -> None:
    for limit, status in AUDIT_LIMITS:
        answer = await send(
            edge.admin_port, "GET", f"/admin/kill-switches/audit?{query(('limit', limit))}", headers=bearer()
        )
        assert answer.status == status, (limit[:20], answer)
        if status == 400:
            assert json.loads(answer.body)["error"] == "'limit' must be a whole number from 1 to 1000"
    # Repeated: the first counts.
    answer = await send(
        edge.admin_port, "GET", f"/admin/kill-switches/audit?{query(('limit', '2'), ('limit', 'x'))}", headers=bearer()
    )
    assert answer.status == 200
    answer = await send(
        edge.admin_port, "GET", f"/admin/kill-switches/audit?{query(('limit', 'x'), ('limit', '2'))}", headers=bearer()
    )
    assert answer.status == 400


# === property tests: generated junk at every route =================================

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Text of every kind: control characters, other scripts, what our own code reads
# specially, huge numbers, and the personal data and secrets a refusal must not repeat.
interesting = st.sampled_from(
    [
        "",
        " ",
        "0",
        "-1",
        "1e309",
        "NaN",
        "9" * 25,
        "-" + "9" * 25,
        "١٢٣",
        "\x00",
        "\u202e",
        "\ufeff",
        "%",
        "%00",
        "{",
        "}",
        "]]>",
        "<xml>",
        "&amp;",
        "m_",
        "ks_",
        "subscribe",
        "unsubscribe",
        "TEMPLATESENDJOBFINISH",
        "text",
        "event",
        *PERSONAL,
        AES_KEY,
    ]
)
junk_text = st.one_of(
    st.text(max_size=30),
    st.text(st.characters(codec="ascii"), max_size=30),
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    interesting,
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    junk_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(junk_text, inner, max_size=4),
    max_leaves=10,
)
content_types = st.sampled_from(
    [
        "",
        "application/json",
        "text/xml",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/plain; charset=gbk",
        "application/json; charset=latin-1",
    ]
)


def json_bodies(objects: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=300), json_values.map(dumped), objects.map(dumped))


def headers_with(content_type: str, extra: Mapping[str, str | bytes] = {}) -> dict[str, str | bytes]:
    return {**({"Content-Type": content_type} if content_type else {}), **extra}


async def check(
    edge: Edge, port: int, method: str, target: str, body: bytes, headers: Mapping[str, str | bytes]
) -> Answer:
    """Send; the answer is never 5xx, a refusal records nothing, nothing leaks."""
    before = await recorded(edge)
    raw = request_bytes(method, target, body, headers)
    answer = await send_raw(port, raw)
    assert answer.status < 500, (method, target[:200], body[:200], answer.text[:300])
    assert_private(raw, answer)
    if answer.status >= 400:
        assert await recorded(edge) == before, (method, target[:200], body[:200], answer.status, answer.text[:300])
    return answer


@st.composite
def query_pairs(draw: st.DrawFn, names: list[str]) -> list[tuple[str, str]]:
    """Some of the names, maybe repeated, with junk values."""
    chosen = draw(st.lists(st.sampled_from(names), max_size=6))
    return [(name, draw(junk_text)) for name in chosen]


@given(data=st.data())
@FUZZ
async def test_fuzz_wechat_url_check(edge: Edge, data: st.DataObject) -> None:
    timestamp, nonce, echostr = data.draw(junk_text), data.draw(junk_text), data.draw(junk_text)
    valid = data.draw(st.booleans())
    given_signature = signature(CALLBACK_TOKEN, timestamp, nonce) if valid else data.draw(junk_text)
    pairs = [("timestamp", timestamp), ("nonce", nonce), ("signature", given_signature), ("echostr", echostr)]
    pairs += data.draw(query_pairs(["signature", "timestamp", "nonce", "echostr", "encrypt_type"]))
    answer = await check(edge, edge.port, "GET", f"/webhooks/wechat?{query(*pairs)}", b"", {})
    if valid:
        assert (answer.status, answer.text) == (200, echostr)
    else:
        assert answer.status == 403


# Numbers of every size, as text: WeChat's CreateTime, durations, limits.
numbers = st.one_of(
    st.integers(min_value=-(10**25), max_value=10**25),
    st.integers(min_value=10**9, max_value=10**15),  # past what dates and timedelta hold
    st.integers(min_value=10**18, max_value=10**22),
).map(str)


@st.composite
def corrupted(draw: st.DrawFn, valid: dict[str, Any], junk: st.SearchStrategy[Any]) -> dict[str, Any]:
    """A valid request's fields with a few replaced by junk, dropped, or added."""
    fields = dict(valid)
    # Mostly one field or none: junk that gets past the first check reaches the next.
    count = min(len(fields), draw(st.sampled_from([0, 0, 1, 1, 1, 2, 3])))
    for name in draw(st.lists(st.sampled_from(sorted(fields)), min_size=count, max_size=count, unique=True)):
        if draw(st.integers(min_value=0, max_value=3)) == 0:
            del fields[name]
        else:
            fields[name] = draw(junk)
    if draw(st.integers(min_value=0, max_value=7)) == 0:
        fields[draw(junk_text)] = draw(junk)
    return fields


# Retries are recognised by WeChat's MsgId and Alibaba's biz_id: each request gets
# its own, so that none is skipped as a retry (nor a shrunk failing example when it
# is tried again).
UNIQUE = "@unique-id@"
IDS = itertools.count(6_000_000_000_000_000_000)


def unique(body: bytes) -> bytes:
    parts = body.split(UNIQUE.encode())
    return b"".join(part + (str(next(IDS)).encode() if i < len(parts) - 1 else b"") for i, part in enumerate(parts))


EVENT_KINDS = [
    ("event", "subscribe"),
    ("event", "unsubscribe"),
    ("event", "SCAN"),
    ("event", "CLICK"),
    ("event", "TEMPLATESENDJOBFINISH"),
    ("event", "MASSSENDJOBFINISH"),
    ("text", ""),
    ("image", ""),
]


@st.composite
def wechat_events(draw: st.DrawFn) -> bytes:
    msg_type, event = draw(st.sampled_from(EVENT_KINDS))
    valid: dict[str, Any] = {
        "ToUserName": "gh_shop",
        "FromUserName": draw(st.sampled_from([OPENID, OPENID, "oSomeoneElse000000000000001"])),
        "CreateTime": draw(numbers),
        "MsgType": msg_type,
        "Event": event,
        "MsgId": UNIQUE,
        "MsgID": draw(numbers),
        "Status": draw(st.sampled_from(["success", "failed:user block", "failed: system failed"])),
        # What the policy's wechat_events rules read: QR scenes (a {scene} tag made of
        # junk), menu keys, keywords and TD (answered with a passive reply).
        "EventKey": draw(
            st.sampled_from(["qrscene_store_hz_01", "store_sh_02", "qrscene_", "MENU_MOM_BABY", ""])
            | junk_text.map(lambda text: "qrscene_store_" + text)
        ),
        "Content": draw(st.sampled_from(["TD", " 退订 ", "订阅", "秒杀", "]]>秒杀", "hello"])),
    }
    fields = draw(corrupted(valid, junk_text))
    xml = (
        "<xml>" + "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in fields.items() if k.isidentifier()) + "</xml>"
    ).encode()
    return draw(st.sampled_from([xml, xml, xml, xml[: len(xml) // 2], xml.replace(b"<xml>", b"<XML>", 1)]))


@given(data=st.data())
@FUZZ
async def test_fuzz_wechat_events_in_plain_mode(edge: Edge, data: st.DataObject) -> None:
    timestamp, nonce = data.draw(junk_text), data.draw(junk_text)
    valid = data.draw(st.booleans())
    given_signature = signature(CALLBACK_TOKEN, timestamp, nonce) if valid else data.draw(junk_text)
    pairs = [("timestamp", timestamp), ("nonce", nonce), ("signature", given_signature)]
    pairs += data.draw(query_pairs(["encrypt_type", "msg_signature", "openid"]))
    body = unique(data.draw(st.one_of(wechat_events(), st.binary(max_size=300))))
    headers = headers_with(data.draw(content_types))
    answer = await check(edge, edge.port, "POST", f"/webhooks/wechat?{query(*pairs)}", body, headers)
    if not valid and ("encrypt_type", "aes") not in pairs:
        assert answer.status == 403


@st.composite
def encrypted_payloads(draw: st.DrawFn, appid: str) -> Callable[[], str]:
    """How to make an Encrypt value (made when sent: each gets its own MsgId)."""
    xml = draw(st.one_of(wechat_events(), st.binary(max_size=200)))
    choice = draw(st.sampled_from(["real", "real", "lying-length", "short", "random-blocks", "random-base64", "junk"]))
    if choice == "real":
        sender = draw(st.sampled_from([appid, appid, "", "wx_other"]))
        return lambda: encrypt(unique(xml), AES_KEY, sender)
    if choice == "lying-length":
        declared = draw(st.integers(min_value=0, max_value=2**32 - 1))
        return lambda: seal(os.urandom(16) + struct.pack(">I", declared) + unique(xml) + appid.encode())
    if choice == "short":
        short = seal(draw(st.binary(max_size=19)))
    elif choice == "random-blocks":
        blocks = draw(st.binary(min_size=16, max_size=128))
        short = base64.b64encode(blocks[: len(blocks) // 16 * 16]).decode()
    elif choice == "random-base64":
        short = base64.b64encode(draw(st.binary(max_size=100))).decode()
    else:
        short = draw(junk_text)
    return lambda: short


@given(data=st.data())
@FUZZ
async def test_fuzz_wechat_events_in_safe_mode(edge: Edge, data: st.DataObject) -> None:
    encrypted = data.draw(encrypted_payloads(edge.fake.wechat.appid))()
    timestamp, nonce = data.draw(junk_text), data.draw(junk_text)
    valid = data.draw(st.booleans())
    given_signature = signature(CALLBACK_TOKEN, timestamp, nonce, encrypted) if valid else data.draw(junk_text)
    pairs = [("timestamp", timestamp), ("nonce", nonce), ("encrypt_type", "aes"), ("msg_signature", given_signature)]
    pairs += data.draw(query_pairs(["signature", "encrypt_type", "msg_signature"]))
    body = safe_body(encrypted) if "]]>" not in encrypted else safe_body("")
    body = data.draw(st.sampled_from([body, body[:-10]])) if data.draw(st.booleans()) else body
    answer = await check(edge, edge.port, "POST", f"/webhooks/wechat?{query(*pairs)}", body, {})
    if not valid:
        assert answer.status in (400, 403)


@st.composite
def receipts(draw: st.DrawFn, out_id: str) -> list[Any]:
    def one() -> dict[str, Any]:
        valid: dict[str, Any] = {
            "phone_number": "13900139000",
            "send_time": "2026-11-11 10:00:01",
            "report_time": "2026-11-11 10:00:05",
            "success": draw(st.sampled_from([True, False, "true"])),
            "err_code": draw(st.sampled_from(["DELIVERED", "IC:0001"]) | junk_text),
            "err_msg": "用户接收成功",
            "biz_id": UNIQUE,
            "out_id": draw(st.sampled_from([out_id, out_id, out_id.split(".")[0], "m_01JCNOTAMESSAGE0000000000.sms"])),
        }
        return draw(corrupted(valid, json_values))

    return [one() for _ in range(draw(st.integers(min_value=0, max_value=3)))]


@given(data=st.data())
@FUZZ
async def test_fuzz_sms_receipts(edge: Edge, data: st.DataObject) -> None:
    right = data.draw(st.sampled_from([True, True, True, False]))
    token = SMS_TOKEN if right else data.draw(st.sampled_from([SMS_TOKEN + "\x00", SMS_TOKEN[:-1], ""]) | junk_text)
    pairs = [("token", token), *data.draw(query_pairs(["token"]))]
    body = unique(data.draw(st.one_of(receipts(edge.sms_out_id).map(dumped), json_bodies(receipts(edge.sms_out_id)))))
    headers = headers_with(data.draw(content_types))
    answer = await check(edge, edge.port, "POST", f"/webhooks/aliyun-sms?{query(*pairs)}", body, headers)
    if token != SMS_TOKEN:
        assert answer.status == 403
    message = (await edge.gateway.store.get_messages([edge.sms_message]))[0]
    assert message is not None
    odd = [e.provider_code for e in message.timeline if not e.provider_code.isprintable() or len(e.provider_code) > 64]
    assert odd == [], "a receipt's code was kept with control characters or at length"


@given(data=st.data())
@FUZZ
async def test_fuzz_one_click_unsubscribe(edge: Edge, data: st.DataObject) -> None:
    real = edge.unsubscribe
    body_part, _, sig = real.partition(".")
    token = data.draw(
        st.one_of(
            junk_text,
            junk_text.map(lambda t: f"{body_part}.{t}"),
            junk_text.map(lambda t: f"{t}.{sig}"),
            junk_text.map(lambda t: real + t),
            st.just(real),
        )
    )
    method = data.draw(st.sampled_from(["GET", "POST"]))
    body = data.draw(st.sampled_from([b"List-Unsubscribe=One-Click"]) | st.binary(max_size=200))
    path = quote(token, safe="") or "x"
    answer = await check(edge, edge.port, method, f"/unsubscribe/{path}", body, headers_with(data.draw(content_types)))
    if token != real:
        assert answer.status in (400, 404)


SCOPES = [
    ("global", ""),
    ("campaign", "c-double11"),
    ("scenario", "order.shipped"),
    ("bu", "growth"),
    *(("category", str(c)) for c in Category),
    *(("channel", str(c)) for c in Channel),
]
durations = st.one_of(
    st.tuples(numbers, st.sampled_from(["s", "m", "h", "d", "w", "y", ""])).map("".join),
    st.sampled_from(["6h", "90s", "0s", "36525d", "36526d", "10000000000d", "999999999999999w"]),
)
instants = st.one_of(
    st.sampled_from(["2099-01-01T00:00:00+00:00", "9999-12-31T23:59:59-23:59", "2000-01-01T00:00:00+00:00"]),
    st.datetimes(timezones=st.sampled_from([UTC, None])).map(lambda d: d.isoformat()),
)


@st.composite
def switch_bodies(draw: st.DrawFn) -> dict[str, Any]:
    scope, value = draw(st.sampled_from(SCOPES))
    valid: dict[str, Any] = {"scope": scope, "value": value, "reason": "wrong price", "actor": "ops-wang"}
    expiry = draw(st.sampled_from(["expires_in", "expires_in", "expires_at", None]))
    if expiry:
        valid[expiry] = draw(durations if expiry == "expires_in" else instants)
    return draw(corrupted(valid, st.one_of(json_values, durations, instants)))


def admin_headers(data: st.DataObject) -> tuple[dict[str, str | bytes], bool]:
    choice = data.draw(st.sampled_from(["right"] * 5 + ["wrong", "absent", "bytes"]))
    if choice == "right":
        return bearer(), True
    if choice == "wrong":
        return bearer(data.draw(junk_text).replace("\r", " ").replace("\n", " ")), False
    if choice == "absent":
        return {}, False
    raw = data.draw(st.binary(min_size=1, max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b))
    return {"Authorization": b"Bearer " + raw}, False


@given(data=st.data())
@FUZZ
async def test_fuzz_admin_create(edge: Edge, data: st.DataObject) -> None:
    headers, authorized = admin_headers(data)
    body = data.draw(json_bodies(switch_bodies()))
    answer = await check(edge, edge.admin_port, "POST", "/admin/kill-switches", body, headers)
    if not authorized:
        assert answer.status in (400, 401)  # 400: aiohttp refused the header bytes themselves
        return
    assert answer.status in (201, 400, 413), answer.text
    if answer.status == 201:
        made = json.loads(answer.body)["switch"]
        for name in ("value", "reason", "actor"):
            assert plain_text(made[name]), made
        if made["expires_at"]:
            expires = datetime.fromisoformat(made["expires_at"])
            assert timedelta(0) < expires - datetime.now(UTC) <= timedelta(days=36526)
            expires.astimezone(UTC)  # raises OverflowError past the year 9999 in UTC


@given(data=st.data())
@FUZZ
async def test_fuzz_admin_clear_list_and_audit(edge: Edge, data: st.DataObject) -> None:
    headers, authorized = admin_headers(data)
    if not await edge.gateway.store.kill_switches():  # one for the examples to clear
        await send(edge.admin_port, "POST", "/admin/kill-switches", dumped(SWITCH), bearer())
    real = (await edge.gateway.store.kill_switches())[0].switch_id
    route = data.draw(st.sampled_from(["clear", "audit", "list"]))
    if route == "clear":
        switch_id = data.draw(st.sampled_from([real]) | junk_text)
        body = data.draw(json_bodies(corrupted({"actor": "ops-wang", "note": "price fixed"}, json_values)))
        answer = await check(
            edge, edge.admin_port, "DELETE", f"/admin/kill-switches/{quote(switch_id, safe='') or 'x'}", body, headers
        )
        # 404 before the token is looked at: an id the route does not take ("{", "a/b").
        assert answer.status in ((200, 400, 404, 405) if authorized else (400, 401, 404))
        if answer.status == 200:
            [last, *_] = await edge.gateway.store.kill_audit(1)
            assert plain_text(last.actor) and plain_text(last.note), last
    elif route == "audit":
        pairs = data.draw(query_pairs(["limit", "offset"]))
        answer = await check(edge, edge.admin_port, "GET", f"/admin/kill-switches/audit?{query(*pairs)}", b"", headers)
        if authorized:
            limit = next((v for k, v in pairs if k == "limit"), "50")
            digits = limit.lstrip("0")
            plain = limit.isascii() and limit.isdigit() and len(digits) <= 4 and 1 <= int(digits or "0") <= 1000
            assert answer.status == (200 if plain else 400), (limit, answer.text)
    else:
        body = data.draw(st.binary(max_size=100))
        answer = await check(edge, edge.admin_port, "GET", "/admin/kill-switches", body, headers)
        assert answer.status in ((200,) if authorized else (400, 401))
