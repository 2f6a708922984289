"""Fake app-push providers: FCM HTTP v1 with Google's OAuth token endpoint (the JWT
assertion's RS256 signature is checked against the service account's public key), and
JPush v3 with HTTP Basic auth."""

from __future__ import annotations

import base64
import itertools
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.fakes.base import FakeServer


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def fcm_error(status: int, code: str, message: str) -> web.Response:
    grpc_status = {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        429: "RESOURCE_EXHAUSTED",
        500: "INTERNAL",
        503: "UNAVAILABLE",
    }[status]
    body = {
        "error": {
            "code": status,
            "message": message,
            "status": grpc_status,
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}],
        }
    }
    return web.json_response(body, status=status)


@dataclass
class FakeFcm(FakeServer):
    project: str = "example-shop"
    sends: list[dict[str, Any]] = field(default_factory=list)
    unregistered: set[str] = field(default_factory=set)
    token_requests: int = 0

    def __post_init__(self) -> None:
        super().__init__()
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.client_email = "herald@example-shop.iam.gserviceaccount.com"
        self._tokens: set[str] = set()
        self._ids = itertools.count(1)
        self.app.router.add_post("/token", self._token)
        self.app.router.add_post("/v1/projects/{project}/messages:send", self._send)

    def service_account(self) -> bytes:
        pem = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        return json.dumps(
            {
                "type": "service_account",
                "project_id": self.project,
                "private_key": pem,
                "client_email": self.client_email,
                "token_uri": f"{self.url}/token",
            }
        ).encode()

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        try:
            header, claims, signature = str(form.get("assertion", "")).split(".")
            self.key.public_key().verify(
                _unb64(signature), f"{header}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
            data = orjson.loads(_unb64(claims))
        except (ValueError, InvalidSignature):
            return web.json_response(
                {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}, status=400
            )
        if data.get("iss") != self.client_email or "firebase.messaging" not in data.get("scope", ""):
            return web.json_response({"error": "invalid_scope"}, status=400)
        self.token_requests += 1
        token = "ya29." + secrets.token_urlsafe(32)
        self._tokens.add(token)
        return web.json_response({"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

    async def _send(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization", "").removeprefix("Bearer ") not in self._tokens:
            return fcm_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        if request.match_info["project"] != self.project:
            return fcm_error(403, "SENDER_ID_MISMATCH", "SenderId mismatch")
        if (injected := self.injected("send")) is not None:
            return fcm_error(*injected)
        body = await request.json()
        message = body.get("message", {})
        if not message.get("token") or "notification" not in message:
            return fcm_error(400, "INVALID_ARGUMENT", "Request contains an invalid argument.")
        if message["token"] in self.unregistered:
            return fcm_error(404, "UNREGISTERED", "Requested entity was not found.")
        self.sends.append(message)
        return web.json_response({"name": f"projects/{self.project}/messages/0:{next(self._ids)}"})


@dataclass
class FakeJpush(FakeServer):
    app_key: str = "jpush-app-key"
    master_secret: str = "jpush-master-secret"
    sends: list[dict[str, Any]] = field(default_factory=list)
    unknown: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        super().__init__()
        self._ids = itertools.count(54043195528000001)
        self.app.router.add_post("/v3/push", self._push)

    async def _push(self, request: web.Request) -> web.Response:
        expected = "Basic " + base64.b64encode(f"{self.app_key}:{self.master_secret}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.json_response({"error": {"code": 1004, "message": "Authen failed"}}, status=401)
        body = await request.json()
        ids = body.get("audience", {}).get("registration_id", []) if isinstance(body.get("audience"), dict) else []
        if not ids or "notification" not in body:
            return web.json_response(
                {"error": {"code": 1003, "message": "audience value must be JSON object"}}, status=400
            )
        if all(i in self.unknown for i in ids):
            return web.json_response(
                {"error": {"code": 1011, "message": "cannot find user by this audience"}}, status=400
            )
        self.sends.append(body)
        return web.json_response({"sendno": "0", "msg_id": str(next(self._ids))})
