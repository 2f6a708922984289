"""A fake WeChat Official Account API: access tokens, template, customer-service and
mass-send messages, answering with WeChat's JSON shapes and error codes."""

from __future__ import annotations

import itertools
import json
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes.base import FakeServer

OPENID_RE = re.compile(r"^[A-Za-z0-9_-]{6,64}$")


def _err(code: int, message: str) -> web.Response:
    # WeChat answers errors with HTTP 200 and the code in the body.
    return web.json_response({"errcode": code, "errmsg": f"{message} rid: {secrets.token_hex(6)}"})


@dataclass
class FakeWechat(FakeServer):
    appid: str = "wx_fake_appid"
    secret: str = "fake-secret"
    token_requests: int = 0
    # Sends that reached a user: deduplicated by (openid, client_msg_id) like WeChat.
    template_sends: list[dict[str, Any]] = field(default_factory=list)
    cs_sends: list[dict[str, Any]] = field(default_factory=list)
    mass_calls: list[dict[str, Any]] = field(default_factory=list)
    template_calls: int = 0
    # Template sends that repeated a (openid, client_msg_id) already delivered.
    repeats: int = 0
    # openids that unfollowed (43004 / 45015), that refuse templates (43101)
    unfollowed: set[str] = field(default_factory=set)
    refusing: set[str] = field(default_factory=set)
    cs_closed: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        super().__init__()
        self._valid: set[str] = set()
        self._expired: set[str] = set()
        self._client_ids: set[tuple[str, str]] = set()
        self._mass_ids: set[str] = set()
        self._msgids = itertools.count(1_000_000_001)
        # client_msg_id -> wall-clock time it first arrived (benchmarks read it)
        self.arrived_at: dict[str, float] = {}
        self._reported = 0
        self.app.router.add_get("/cgi-bin/token", self._token)
        self.app.router.add_post("/cgi-bin/stable_token", self._stable_token)
        self.app.router.add_post("/cgi-bin/message/template/send", self._template)
        self.app.router.add_post("/cgi-bin/message/custom/send", self._custom)
        self.app.router.add_post("/cgi-bin/message/mass/send", self._mass)

    async def post_job_reports(self, callback_url: str, token: str, blocked: set[str]) -> int:
        """Post TEMPLATESENDJOBFINISH for every template send not reported yet, the way
        WeChat does: ``failed:user block`` for the openids in ``blocked``."""
        import hashlib

        import aiohttp

        reported = 0
        async with aiohttp.ClientSession() as http:
            for send in self.template_sends[self._reported :]:
                status = "failed:user block" if send["touser"] in blocked else "success"
                created = str(int(time.time()))
                body = (
                    f"<xml><ToUserName><![CDATA[gh_shop]]></ToUserName><FromUserName><![CDATA[{send['touser']}]]>"
                    f"</FromUserName><CreateTime>{created}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
                    f"<Event><![CDATA[TEMPLATESENDJOBFINISH]]></Event><MsgID>{send['msgid']}</MsgID>"
                    f"<Status><![CDATA[{status}]]></Status></xml>"
                )
                nonce = secrets.token_hex(4)
                signature = hashlib.sha1("".join(sorted([token, created, nonce])).encode()).hexdigest()
                params = {"signature": signature, "timestamp": created, "nonce": nonce}
                async with http.post(callback_url, params=params, data=body.encode()) as answer:
                    assert answer.status == 200, await answer.text()
                self._reported += 1
                reported += 1
        return reported

    def expire_tokens(self) -> None:
        """Every token issued so far answers 42001 from now on."""
        self._expired |= self._valid
        self._valid.clear()

    def delivered_ids(self) -> list[str]:
        return [send["client_msg_id"] for send in self.template_sends]

    def _issue(self, appid: str, secret: str) -> web.Response:
        if appid != self.appid:
            return _err(40013, "invalid appid")
        if secret != self.secret:
            return _err(40125, "invalid appsecret")
        self.token_requests += 1
        token = secrets.token_urlsafe(48)
        # A new token may invalidate the old one: the fake always does.
        self._expired |= self._valid
        self._valid = {token}
        return web.json_response({"access_token": token, "expires_in": 7200})

    async def _token(self, request: web.Request) -> web.Response:
        if request.query.get("grant_type") != "client_credential":
            return _err(40002, "invalid grant_type")
        return self._issue(request.query.get("appid", ""), request.query.get("secret", ""))

    async def _stable_token(self, request: web.Request) -> web.Response:
        body = await request.json()
        return self._issue(body.get("appid", ""), body.get("secret", ""))

    def _auth(self, request: web.Request) -> web.Response | None:
        token = request.query.get("access_token", "")
        if token in self._valid:
            return None
        if token in self._expired:
            return _err(42001, "access_token expired")
        return _err(40001, "invalid credential, access_token is invalid or not latest")

    async def _accept(self, request: web.Request, route: str) -> dict[str, Any] | web.Response:
        """What every message endpoint checks first, in WeChat's order: the token, then
        (here) an injected answer, then the JSON body. The body, or the answer to give."""
        if (denied := self._auth(request)) is not None:
            return denied
        if (injected := self.injected(route)) is not None:
            return _err(injected, "injected")
        try:
            body = json.loads(await request.text())
        except ValueError:
            return _err(47001, "data format error")
        return body if isinstance(body, dict) else _err(47001, "data format error")

    async def _template(self, request: web.Request) -> web.Response:
        self.template_calls += 1
        body = await self._accept(request, "template")
        if isinstance(body, web.Response):
            return body
        openid = body.get("touser", "")
        if not OPENID_RE.match(openid):
            return _err(40003, "invalid openid")
        if not body.get("template_id"):
            return _err(40037, "invalid template_id")
        data = body.get("data")
        if not isinstance(data, dict) or any(not isinstance(v, dict) or "value" not in v for v in data.values()):
            return _err(47003, "argument invalid! data.value empty")
        if openid in self.unfollowed:
            return _err(43004, "require subscribe")
        if openid in self.refusing:
            return _err(43101, "user refuse to accept the msg")
        msgid = next(self._msgids)
        client_id = body.get("client_msg_id", "")
        if not client_id or (openid, client_id) not in self._client_ids:
            self._client_ids.add((openid, client_id))
            self.template_sends.append({**body, "msgid": msgid})
            self.arrived_at[client_id] = time.time()
        else:
            self.repeats += 1  # sent again (a retry, a worker taking over): WeChat delivers it once
        return web.json_response({"errcode": 0, "errmsg": "ok", "msgid": msgid})

    async def _custom(self, request: web.Request) -> web.Response:
        body = await self._accept(request, "custom")
        if isinstance(body, web.Response):
            return body
        openid = body.get("touser", "")
        if not OPENID_RE.match(openid):
            return _err(40003, "invalid openid")
        msgtype = body.get("msgtype")
        if not msgtype or msgtype not in body:
            return _err(40008, "invalid message type")
        if openid in self.unfollowed or openid in self.cs_closed:
            return _err(45015, "response out of time limit or subscription is canceled")
        self.cs_sends.append(body)
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    async def _mass(self, request: web.Request) -> web.Response:
        body = await self._accept(request, "mass")
        if isinstance(body, web.Response):
            return body
        touser = body.get("touser")
        if not isinstance(touser, list) or len(touser) > 10_000:
            return _err(40032, "invalid openid list size")
        if len(touser) < 2:
            return _err(40130, "invalid openid list size, at least two openid")
        if any(not isinstance(o, str) or not OPENID_RE.match(o) for o in touser):
            return _err(40003, "invalid openid")
        clientmsgid = body.get("clientmsgid", "")
        if len(clientmsgid.encode()) > 64:
            return _err(45067, "clientmsgid exceed limit")
        if clientmsgid and clientmsgid in self._mass_ids:
            return _err(45065, "clientmsgid exist")
        msgtype = body.get("msgtype")
        if not msgtype or msgtype not in body:
            return _err(40008, "invalid message type")
        self._mass_ids.add(clientmsgid)
        msg_id = next(self._msgids)
        self.mass_calls.append({**body, "msg_id": msg_id})
        return web.json_response(
            {"errcode": 0, "errmsg": "send job submission success", "msg_id": msg_id, "msg_data_id": msg_id}
        )
