"""WeChat's callbacks on the wire: signatures, safe-mode AES and XML (pure).

- URL check and plain mode: ``signature = sha1(sorted([token, timestamp, nonce]))``.
- Safe mode: ``msg_signature = sha1(sorted([token, timestamp, nonce, Encrypt]))``; the
  key is base64(EncodingAESKey + "="), AES-256-CBC with the key's first 16 bytes as
  IV, PKCS#7 padding to 32-byte blocks; the plaintext is 16 random bytes, a 4-byte
  big-endian length, the XML, and the appid.
- XML is parsed by defusedxml, which refuses entities (XXE, billion laughs).
- A passive reply is the callback's HTTP answer: a text message back to the user; in
  safe mode encrypted as above and signed with ``sha1(sorted([token, timestamp,
  nonce, Encrypt]))``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
from xml.etree.ElementTree import Element

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException

BLOCK = 32


class CallbackError(ValueError):
    """A callback that is not WeChat's or cannot be read; nothing of it is recorded."""


def signature(*parts: str) -> str:
    # surrogatepass: a part that is not valid text still hashes (and fails to match).
    return hashlib.sha1("".join(sorted(parts)).encode("utf-8", "surrogatepass")).hexdigest()


def check_signature(expected: str, *parts: str) -> None:
    # Compared as bytes: hmac.compare_digest refuses str with non-ASCII characters.
    given = expected.lower().encode("utf-8", "surrogatepass")
    if not expected or not hmac.compare_digest(given, signature(*parts).encode()):
        raise CallbackError("signature does not match")


def parse_xml(raw: bytes | str) -> dict[str, str]:
    """The children of ``<xml>`` as a flat mapping of tag to text."""
    try:
        root: Element = ElementTree.fromstring(raw)
    except (DefusedXmlException, ElementTree.ParseError, ValueError) as exc:
        raise CallbackError(f"body is not acceptable XML ({type(exc).__name__})") from exc
    if root.tag != "xml":
        raise CallbackError("body is not a WeChat <xml> message")
    return {child.tag: (child.text or "").strip() for child in root}


def _key(encoding_aes_key: str) -> bytes:
    """The AES key; ValueError (never naming the key) unless it is 43 base64 characters."""
    try:
        key = base64.b64decode(encoding_aes_key + "=", validate=True) if len(encoding_aes_key) == 43 else b""
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ValueError("EncodingAESKey must be the 43 letters and digits WeChat shows (32 bytes once base64-decoded)")
    return key


def check_key(encoding_aes_key: str) -> None:
    """Raise ValueError when the EncodingAESKey cannot be WeChat's (checked at start)."""
    _key(encoding_aes_key)


def decrypt(encrypted: str, encoding_aes_key: str, appid: str) -> bytes:
    try:
        key = _key(encoding_aes_key)
    except ValueError as exc:
        raise CallbackError(f"cannot decrypt: the configured {exc}") from exc
    try:
        data = base64.b64decode(encrypted, validate=True)
    except ValueError as exc:
        raise CallbackError("Encrypt is not base64") from exc
    if not data or len(data) % 16:
        raise CallbackError("Encrypt has a bad length")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).decryptor()
    plain = decryptor.update(data) + decryptor.finalize()
    pad = plain[-1]
    if not 1 <= pad <= BLOCK or plain[-pad:] != bytes([pad]) * pad:
        raise CallbackError("Encrypt does not decrypt with this EncodingAESKey")
    plain = plain[:-pad]
    if len(plain) < 20:
        raise CallbackError("Encrypt decrypts to less than the 16 random bytes and 4-byte length WeChat sends")
    (length,) = struct.unpack(">I", plain[16:20])
    if 20 + length > len(plain):
        raise CallbackError("Encrypt declares a message longer than it holds")
    xml, sender = plain[20 : 20 + length], plain[20 + length :].decode(errors="replace")
    if sender != appid:
        raise CallbackError("message is for another appid")
    return xml


def encrypt(xml: bytes, encoding_aes_key: str, appid: str, random16: bytes | None = None) -> str:
    """The reverse of ``decrypt``: a safe-mode reply (and what WeChat sends, in tests)."""
    key = _key(encoding_aes_key)
    plain = (random16 or os.urandom(16)) + struct.pack(">I", len(xml)) + xml + appid.encode()
    pad = BLOCK - len(plain) % BLOCK
    plain += bytes([pad]) * pad
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode()


def _cdata(text: str) -> str:
    # "]]>" cannot appear inside CDATA: end the section there and start another.
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def text_reply(to_user: str, from_account: str, created: int, content: str) -> bytes:
    """A passive text reply: to the user (the event's FromUserName), from the account
    (the event's ToUserName, its original id)."""
    return (
        f"<xml><ToUserName>{_cdata(to_user)}</ToUserName><FromUserName>{_cdata(from_account)}</FromUserName>"
        f"<CreateTime>{created}</CreateTime><MsgType>{_cdata('text')}</MsgType>"
        f"<Content>{_cdata(content)}</Content></xml>"
    ).encode()


def encrypted_reply(
    xml: bytes, token: str, encoding_aes_key: str, appid: str, timestamp: str, nonce: str, random16: bytes | None = None
) -> bytes:
    """A reply for a safe-mode callback: ``xml`` encrypted, with its signature."""
    encrypted = encrypt(xml, encoding_aes_key, appid, random16)
    return (
        f"<xml><Encrypt>{_cdata(encrypted)}</Encrypt>"
        f"<MsgSignature>{_cdata(signature(token, timestamp, encrypted, nonce))}</MsgSignature>"
        f"<TimeStamp>{timestamp}</TimeStamp><Nonce>{_cdata(nonce)}</Nonce></xml>"
    ).encode()
