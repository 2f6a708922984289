"""What arrives on the wire before Herald's handlers run.

A request body that is not a valid protobuf answers INVALID_ARGUMENT on every RPC (grpc
would say UNKNOWN "Unexpected DecodeError"). The bodies are sent as raw bytes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor

from gateway.app import Gateway
from gateway.metrics import fresh_metrics
from herald.v1 import profile_pb2, push_pb2
from tests.e2e.conftest import Api, auth, open_api, settings_for

RPCS: list[MethodDescriptor] = [
    method
    for service in (
        push_pb2.DESCRIPTOR.services_by_name["PushService"],
        profile_pb2.DESCRIPTOR.services_by_name["ProfileService"],
    )
    for method in service.methods
]
SECRET = b"LEAKCHECK"  # in every body sent below; must come back in no answer


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
