"""Firebase Cloud Messaging, HTTP v1: an OAuth2 token from the service-account key
(a signed JWT exchanged at Google's token endpoint, cached until near expiry), then
``messages:send``. The answer table branches on the FcmError ``errorCode``."""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from channels.base import Delivery, SendResult, SendStatus, UserFact
from channels.http import Http, HttpAnswer, Unreachable, server_fault, unreachable
from gateway.values.domain import Category

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
REFRESH_BEFORE = 300.0


class ServiceAccountError(ValueError):
    pass


@dataclass(frozen=True)
class ServiceAccount:
    client_email: str
    private_key: rsa.RSAPrivateKey
    token_uri: str
    project_id: str

    @classmethod
    def parse(cls, raw: bytes) -> ServiceAccount:
        try:
            data = orjson.loads(raw)
            key = serialization.load_pem_private_key(data["private_key"].encode(), password=None)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ServiceAccountError(
                f"not a Google service-account key file ({type(exc).__name__}); download one from the "
                "Firebase console, Project settings, Service accounts"
            ) from exc
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ServiceAccountError("the service account's private_key is not an RSA key")
        return cls(
            data["client_email"],
            key,
            data.get("token_uri", "https://oauth2.googleapis.com/token"),
            data.get("project_id", ""),
        )


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def assertion(account: ServiceAccount, now: float) -> str:
    header = _b64(orjson.dumps({"alg": "RS256", "typ": "JWT"}))
    claims = _b64(
        orjson.dumps(
            {
                "iss": account.client_email,
                "scope": SCOPE,
                "aud": account.token_uri,
                "iat": int(now),
                "exp": int(now) + 3600,
            }
        )
    )
    signed = f"{header}.{claims}".encode()
    signature = account.private_key.sign(signed, padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{claims}.{_b64(signature)}"


def error_code(answer: HttpAnswer) -> str:
    error = answer.body.get("error", {}) if isinstance(answer.body, dict) else {}
    for detail in error.get("details", []) if isinstance(error, dict) else []:
        if isinstance(detail, dict) and detail.get("errorCode"):
            return str(detail["errorCode"])
    return str(error.get("status", f"http{answer.status}")) if isinstance(error, dict) else f"http{answer.status}"


def result_of(answer: HttpAnswer) -> SendResult:
    """The answer table (docs/providers.md, "Firebase Cloud Messaging")."""
    if answer.status == 200:
        name = answer.body.get("name", "") if isinstance(answer.body, dict) else ""
        return SendResult(SendStatus.DELIVERED, "200", "accepted by FCM", provider_id=str(name))
    code = error_code(answer)
    if code in ("UNREGISTERED", "SENDER_ID_MISMATCH"):
        return SendResult(SendStatus.FALLBACK, code, "device token no longer valid", fact=UserFact.DEAD_DEVICE_TOKEN)
    if code in ("UNAVAILABLE", "INTERNAL") or answer.status >= 500:
        return SendResult(SendStatus.RETRY, code, "FCM is unavailable", retry_after=answer.retry_after)
    if code == "QUOTA_EXCEEDED" or answer.status == 429:
        return SendResult(SendStatus.RETRY, code, "FCM quota exceeded", retry_after=answer.retry_after or 1.0)
    if code == "THIRD_PARTY_AUTH_ERROR":
        return SendResult(SendStatus.FALLBACK, code, "APNs or web-push credential rejected", trip=True)
    if code in ("PERMISSION_DENIED", "UNAUTHENTICATED") or answer.status in (401, 403):
        return SendResult(SendStatus.FALLBACK, code, "FCM refused our credentials", trip=True)
    return SendResult(SendStatus.FAILED, code, "FCM refused the message as malformed")


def fcm_message(delivery: Delivery) -> dict[str, Any]:
    payload = delivery.payload
    data = {"message_id": delivery.message_id}
    if payload.get("url"):
        data["url"] = payload["url"]
    return {
        "message": {
            "token": delivery.recipient,
            "notification": {"title": payload["title"], "body": payload["body"]},
            "data": data,
            "android": {
                "priority": "HIGH" if delivery.category is Category.BASIC else "NORMAL",
                "collapse_key": delivery.scenario[:64],
            },
        }
    }


class FcmAdapter:
    def __init__(self, name: str, base_url: str, project_id: str, account: ServiceAccount, http: Http) -> None:
        self.name = name
        self._url = f"{base_url.rstrip('/')}/v1/projects/{project_id or account.project_id}/messages:send"
        self._account = account
        self._http = http
        self._token = ""
        self._expires = 0.0
        self.token_fetches = 0

    async def _access_token(self, force: bool = False) -> str | SendResult:
        if self._token and not force and time.time() < self._expires - REFRESH_BEFORE:
            return self._token
        try:
            answer = await self._http.request(
                "POST",
                self._account.token_uri,
                data={"grant_type": GRANT, "assertion": assertion(self._account, time.time())},
            )
        except Unreachable as exc:
            return unreachable("Google OAuth", str(exc))
        body: Mapping[str, Any] = answer.body if isinstance(answer.body, dict) else {}
        if answer.status != 200 or "access_token" not in body:
            if answer.status >= 500:
                return server_fault("Google OAuth", answer)
            return SendResult(
                SendStatus.FALLBACK,
                str(body.get("error", answer.status)),
                "Google refused the service account",
                trip=True,
            )
        self.token_fetches += 1
        self._token = str(body["access_token"])
        self._expires = time.time() + float(body.get("expires_in", 3600))
        return self._token

    async def send(self, delivery: Delivery) -> SendResult:
        for attempt in (1, 2):
            token = await self._access_token(force=attempt == 2)
            if isinstance(token, SendResult):
                return token
            try:
                answer = await self._http.request(
                    "POST", self._url, json=fcm_message(delivery), headers={"Authorization": f"Bearer {token}"}
                )
            except Unreachable as exc:
                return unreachable("FCM", str(exc))
            if answer.status == 401 and attempt == 1 and error_code(answer) != "THIRD_PARTY_AUTH_ERROR":
                continue  # our access token expired early: a new one, once
            return result_of(answer)
        return result_of(answer)

    async def close(self) -> None:
        await self._http.close()
