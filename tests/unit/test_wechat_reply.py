"""Passive replies on the wire: the text message, and its safe-mode envelope read back
the way WeChat reads it (signature, decryption, appid)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from channels.wechat_callback import (
    CallbackError,
    check_signature,
    decrypt,
    encrypt,
    encrypted_reply,
    parse_xml,
    text_reply,
)

TOKEN = "callback-token"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
APPID = "wx1234567890abcdef"
OPENID = "oAbCdEfGhIjKlMnOpQrStUvWxYz1"


def test_text_reply_fields() -> None:
    xml = text_reply(OPENID, "gh_shop", 1731300000, "您已退订营销消息。\n回复 订阅 可重新订阅。")
    assert parse_xml(xml) == {
        "ToUserName": OPENID,
        "FromUserName": "gh_shop",
        "CreateTime": "1731300000",
        "MsgType": "text",
        "Content": "您已退订营销消息。\n回复 订阅 可重新订阅。",
    }


def test_cdata_end_in_the_text_is_kept() -> None:
    content = "a]]>b <c/> & ]]]]>"
    assert parse_xml(text_reply(OPENID, "gh_shop", 1, content))["Content"] == content


def test_encrypt_then_decrypt_round_trips() -> None:
    xml = "<xml><Content>秒杀</Content></xml>".encode()
    encrypted = encrypt(xml, AES_KEY, APPID)
    assert decrypt(encrypted, AES_KEY, APPID) == xml
    assert encrypt(xml, AES_KEY, APPID) != encrypted  # 16 random bytes in front
    with pytest.raises(CallbackError, match="another appid"):
        decrypt(encrypted, AES_KEY, "wx_someone_else")


def test_encrypted_reply_is_what_wechat_can_read() -> None:
    xml = text_reply(OPENID, "gh_shop", 1731300000, "已为您开启秒杀提醒")
    outer = parse_xml(encrypted_reply(xml, TOKEN, AES_KEY, APPID, "1731300001", "n0nce"))
    assert set(outer) == {"Encrypt", "MsgSignature", "TimeStamp", "Nonce"}
    assert (outer["TimeStamp"], outer["Nonce"]) == ("1731300001", "n0nce")
    parts = sorted([TOKEN, "1731300001", "n0nce", outer["Encrypt"]])
    assert outer["MsgSignature"] == hashlib.sha1("".join(parts).encode()).hexdigest()
    check_signature(outer["MsgSignature"], TOKEN, outer["TimeStamp"], outer["Nonce"], outer["Encrypt"])
    assert decrypt(outer["Encrypt"], AES_KEY, APPID) == xml
    with pytest.raises(CallbackError, match="signature"):
        check_signature(outer["MsgSignature"], "not-the-token", outer["TimeStamp"], outer["Nonce"], outer["Encrypt"])


def test_encrypted_reply_pads_to_32_byte_blocks() -> None:
    for size in (0, 11, 12, 43, 44, 1000):
        xml = b"x" * size
        raw = base64.b64decode(parse_xml(encrypted_reply(xml, TOKEN, AES_KEY, APPID, "1", "n"))["Encrypt"])
        plain_len = 16 + 4 + size + len(APPID)
        assert len(raw) == plain_len + (32 - plain_len % 32)


# What XML 1.0 can carry (parse_xml trims, and XML reads \r as \n).
xml_text = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\r")
    .filter(lambda c: c in "\t\n" or ord(c) >= 0x20)
    .filter(lambda c: c not in "\ufffe\uffff"),
    max_size=200,
).map(str.strip)


@given(content=xml_text, to_user=xml_text)
def test_any_reply_text_reads_back_the_same(content: str, to_user: str) -> None:
    outer = parse_xml(encrypted_reply(text_reply(to_user, "gh_shop", 1, content), TOKEN, AES_KEY, APPID, "1", "n"))
    reply = parse_xml(decrypt(outer["Encrypt"], AES_KEY, APPID))
    assert (reply["ToUserName"], reply["Content"]) == (to_user, content)
