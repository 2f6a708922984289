"""What arrives on the wire before Herald's handlers run.

A request body that is not a valid protobuf answers INVALID_ARGUMENT on every RPC (grpc
would say UNKNOWN "Unexpected DecodeError"), and metadata that is not UTF-8 reaches
neither stderr nor the JSON logs (grpc logs such values whole). The bodies are sent
as raw bytes; the metadata through a raw HTTP/2 client, because grpc's own client
refuses to send a header value that is not printable ASCII.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor

from gateway.app import Gateway
from gateway.metrics import fresh_metrics
from herald.v1 import profile_pb2, push_pb2
from tests.e2e.conftest import KEYS, Api, auth, open_api, settings_for
from tests.helpers import free_port, herald, wait_for_port

RPCS: list[MethodDescriptor] = [
    method
    for service in (
        push_pb2.DESCRIPTOR.services_by_name["PushService"],
        profile_pb2.DESCRIPTOR.services_by_name["ProfileService"],
    )
    for method in service.methods
]
SECRET = b"LEAKCHECK"  # in every value sent below; must appear in no answer and no log line


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def not_utf8(message: Descriptor, depth: int = 3) -> bytes | None:
    """A body of ``message`` whose first string field (nested as deep as needed) holds
    bytes that are not UTF-8; None when the message has no string field to break."""
    for field in message.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            return _length_delimited(field.number, SECRET + b"\xff\xfe")
    if depth:
        for field in message.fields:
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                inner = not_utf8(field.message_type, depth - 1)
                if inner is not None:
                    return _length_delimited(field.number, inner)
    return None


CORRUPT = {
    "truncated varint": b"\x08\x80",  # field 1, a varint whose last byte says more follow
    "invalid wire type": b"\x0f",  # field 1, wire type 7 (there is none)
    "length past the end": b"\x0a\x05" + SECRET[:2],  # 5 bytes announced, 2 sent
}


@pytest.fixture
async def memory_api(tmp_path: Path) -> AsyncIterator[Api]:
    gateway = Gateway(settings_for(tmp_path), metrics=fresh_metrics())
    await gateway.start()
    client = await open_api(gateway)
    try:
        yield client
    finally:
        await client.channel.close()
        await gateway.stop(grace=1.0)


@pytest.mark.parametrize("rpc", RPCS, ids=[m.name for m in RPCS])
async def test_a_body_that_is_not_protobuf_is_invalid_argument(memory_api: Api, rpc: MethodDescriptor) -> None:
    call = memory_api.channel.unary_unary(
        f"/{rpc.containing_service.full_name}/{rpc.name}", request_serializer=None, response_deserializer=None
    )
    cases = dict(CORRUPT)
    broken = not_utf8(rpc.input_type)
    if broken is None:
        assert rpc.name == "GetPolicyInfo", f"{rpc.input_type.full_name} has no string field to break"
    else:
        cases["string not UTF-8"] = broken
    for case, body in cases.items():
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(body, metadata=auth("order"))
        details = info.value.details() or ""
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT, (case, details)
        assert f"is not a valid {rpc.input_type.full_name}" in details, (case, details)
        assert "UTF-8" in details and "protos" in details, (case, details)
        assert "LEAK" not in details and "\\x" not in details and "\ufffd" not in details, (case, details)
    refused = memory_api.gateway.metrics.registry.get_sample_value(
        "herald_requests_refused_total", {"method": rpc.name, "code": "INVALID_ARGUMENT"}
    )
    assert refused == len(cases)


# A raw HTTP/2 client: just enough to send one gRPC call with any header bytes and read
# the status back (HPACK literals without Huffman; the reader asks for no dynamic table).


def _hpack_int(value: int, prefix: int) -> bytes:
    top = (1 << prefix) - 1
    if value < top:
        return bytes([value])
    return bytes([top]) + _varint(value - top)


def _hpack_literal(name: bytes, value: bytes) -> bytes:
    """Literal header field without indexing, new name, no Huffman (RFC 7541 6.2.2)."""
    return b"\x00" + _hpack_int(len(name), 7) + name + _hpack_int(len(value), 7) + value


def _read_int(block: bytes, at: int, prefix: int) -> tuple[int, int]:
    value = block[at] & ((1 << prefix) - 1)
    at += 1
    if value < (1 << prefix) - 1:
        return value, at
    shift = 0
    while True:
        byte = block[at]
        at += 1
        value += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _read_string(block: bytes, at: int) -> tuple[str, int]:
    if block[at] & 0x80:
        raise AssertionError("the server sent a Huffman-coded header; this test's HPACK reader does not decode those")
    length, at = _read_int(block, at, 7)
    return block[at : at + length].decode("latin-1"), at + length


def _hpack_decode(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    at = 0
    while at < len(block):
        first = block[at]
        if first & 0x80:  # indexed
            index, at = _read_int(block, at, 7)
            if index != 8:
                raise AssertionError(f"indexed header {index}: this test's HPACK reader knows only 8 (:status 200)")
            headers[":status"] = "200"
            continue
        if first & 0xE0 == 0x20:  # dynamic table size update
            _, at = _read_int(block, at, 5)
            continue
        prefix = 6 if first & 0x40 else 4  # with incremental indexing, or without / never indexed
        index, at = _read_int(block, at, prefix)
        if index:
            raise AssertionError(f"header name by index {index}: this test's HPACK reader reads only literal names")
        name, at = _read_string(block, at)
        value, at = _read_string(block, at)
        headers[name] = value
    return headers


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


async def raw_call(port: int, path: str, metadata: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, str]:
    """One unary call on stream 1; the grpc-status and grpc-message it ends with."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    headers = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.encode()),
        (b":authority", f"127.0.0.1:{port}".encode()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        *metadata,
    ]
    block = b"".join(_hpack_literal(name, value) for name, value in headers)
    writer.write(
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        + _frame(0x4, 0, 0, struct.pack(">HI", 0x1, 0))  # SETTINGS: HEADER_TABLE_SIZE 0
        + _frame(0x1, 0x4, 1, block)  # HEADERS, END_HEADERS
        + _frame(0x0, 0x1, 1, b"\x00" + struct.pack(">I", len(body)) + body)  # DATA, END_STREAM
    )
    await writer.drain()
    answer: dict[str, str] = {}
    pending = b""
    try:
        while True:
            head = await asyncio.wait_for(reader.readexactly(9), 10)
            length, kind, flags = int.from_bytes(head[:3]), head[3], head[4]
            stream = int.from_bytes(head[5:9]) & 0x7FFFFFFF
            payload = await reader.readexactly(length)
            if kind == 0x4 and not flags & 0x1:  # SETTINGS: acknowledge
                writer.write(_frame(0x4, 0x1, 0, b""))
                await writer.drain()
            if stream != 1:
                continue
            if kind == 0x3:  # RST_STREAM
                raise AssertionError(f"the server reset the stream (error {int.from_bytes(payload)})")
            if kind in (0x1, 0x9):  # HEADERS, CONTINUATION
                pending += payload
                if flags & 0x4:
                    answer.update(_hpack_decode(pending))
                    pending = b""
            if flags & 0x1 and kind in (0x0, 0x1):  # END_STREAM
                break
    finally:
        writer.close()
    return int(answer["grpc-status"]), unquote(answer.get("grpc-message", ""))


async def test_metadata_that_is_not_utf8_never_reaches_the_logs(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "HERALD_LISTEN": f"127.0.0.1:{port}",
        "HERALD_ADMIN_LISTEN": "127.0.0.1:0",
        "HERALD_DATA_DIR": str(tmp_path / "var"),
        "HERALD_LOG_LEVEL": "DEBUG",
    }
    env.pop("HERALD_REDIS_URL", None)
    log = tmp_path / "serve.log"
    key = KEYS["order"].encode()
    info = "/herald.v1.PushService/GetPolicyInfo"
    async with herald("serve", env, log):
        await asyncio.to_thread(wait_for_port, port, 20)
        # grpc decodes a value that is not UTF-8 as Latin-1 and lets the call through:
        for value in (b"Bearer hk_order_" + SECRET + b"\xff\xfe", b"Bearer " + key + SECRET + b"\xff"):
            status, message = await raw_call(port, info, [(b"authorization", value)], b"")
            assert status == grpc.StatusCode.UNAUTHENTICATED.value[0], message
            assert "the authorization metadata is not valid UTF-8" in message, message
            assert "Bearer <api key>" in message and "LEAK" not in message
        # UTF-8, but not ASCII: no API key has such characters.
        status, message = await raw_call(port, info, [(b"authorization", b"Bearer hk_" + SECRET + "é".encode())], b"")
        assert status == grpc.StatusCode.UNAUTHENTICATED.value[0] and "Bearer <api key>" in message, message
        # Metadata Herald does not read: the call goes on, the value stays out of the logs.
        status, message = await raw_call(
            port, info, [(b"authorization", b"Bearer " + key), (b"x-note", SECRET + b"\xff")], b""
        )
        assert status == 0, message
        # A body that is not a valid PushRequest, with a user id in it.
        body = not_utf8(push_pb2.PushRequest.DESCRIPTOR)
        assert body is not None
        status, message = await raw_call(
            port, "/herald.v1.PushService/Push", [(b"authorization", b"Bearer " + key)], body
        )
        assert status == grpc.StatusCode.INVALID_ARGUMENT.value[0], message
    written = log.read_bytes()
    leaked = [line for line in written.splitlines() if SECRET in line or key in line or b"Invalid encoding" in line]
    assert not leaked, leaked
    assert b"DecodeError" not in written, written.decode("latin-1")
    events = [json.loads(line) for line in written.splitlines() if line.startswith(b"{")]
    refused = [(e["method"], e["code"]) for e in events if e["event"] == "refused"]
    assert refused == [("GetPolicyInfo", "UNAUTHENTICATED")] * 3 + [("Push", "INVALID_ARGUMENT")], refused
