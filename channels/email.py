"""Email over SMTP submission (aiosmtplib): STARTTLS on 587 or implicit TLS on 465,
a text part and an HTML part, and for marketing the RFC 8058 one-click unsubscribe
headers pointing at Herald's own unsubscribe URL."""

from __future__ import annotations

import re
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import aiosmtplib

from channels.base import Delivery, SendResult, SendStatus, UserFact
from gateway.values.domain import Category

ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


def result_of(code: int, message: str) -> SendResult:
    """The answer table (docs/providers.md, "Email over SMTP"): 4xx passing, 5.1.x
    bad address, 5.7.x policy, other 5xx permanent."""
    text = str(code)
    enhanced = ENHANCED.search(message or "")
    if 200 <= code < 300:
        return SendResult(SendStatus.DELIVERED, text, "accepted by the mail server")
    if 400 <= code < 500:
        return SendResult(SendStatus.RETRY, text, "mail server deferred the message")
    if enhanced and enhanced.group(1) == "5" and enhanced.group(2) == "1":
        return SendResult(
            SendStatus.FALLBACK, f"{text} {enhanced.group(0)}", "mailbox does not exist", fact=UserFact.BAD_EMAIL
        )
    if enhanced and enhanced.group(1) == "5" and enhanced.group(2) == "7":
        return SendResult(SendStatus.FAILED, f"{text} {enhanced.group(0)}", "refused by mail policy", trip=True)
    if code in (550, 551, 553):
        return SendResult(SendStatus.FALLBACK, text, "mailbox unavailable", fact=UserFact.BAD_EMAIL)
    return SendResult(SendStatus.FAILED, text, "mail server refused the message")


class SmtpAdapter:
    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        tls: str,
        sender: str,
        username: str,
        password: str,
        unsubscribe_url: Callable[[Delivery], str | None],
        timeout: float = 15.0,
    ) -> None:
        self.name = name
        self._host = host
        self._port = port
        self._tls = tls
        self._sender = sender
        self._username = username or None
        self._password = password or None
        self._unsubscribe_url = unsubscribe_url
        self._timeout = timeout

    def message(self, delivery: Delivery) -> EmailMessage:
        payload = delivery.payload
        message = EmailMessage()
        message["From"] = self._sender
        message["To"] = delivery.recipient
        message["Subject"] = payload["subject"]
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(idstring=delivery.delivery_id.replace(".", "-"))
        message["X-Herald-Delivery"] = delivery.delivery_id
        if delivery.category is Category.MARKETING:
            url = self._unsubscribe_url(delivery)
            if url:
                message["List-Unsubscribe"] = f"<{url}>"
                message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        message.set_content(payload["text"])
        if payload.get("html"):
            message.add_alternative(payload["html"], subtype="html")
        return message

    async def send(self, delivery: Delivery) -> SendResult:
        try:
            errors, reply = await aiosmtplib.send(
                self.message(delivery),
                hostname=self._host,
                port=self._port,
                username=self._username,
                password=self._password,
                use_tls=self._tls == "implicit",
                start_tls=self._tls == "starttls",
                timeout=self._timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            if not exc.recipients:
                return result_of(550, "")
            return result_of(exc.recipients[0].code, exc.recipients[0].message)
        except aiosmtplib.SMTPAuthenticationError as exc:
            return SendResult(SendStatus.FALLBACK, str(exc.code), "SMTP login refused", trip=True)
        except aiosmtplib.SMTPResponseException as exc:
            return result_of(exc.code, exc.message)
        except (aiosmtplib.SMTPException, OSError) as exc:
            return SendResult(SendStatus.RETRY, "unreachable", f"mail server did not answer ({type(exc).__name__})")
        if errors:
            refused = next(iter(errors.values()))
            return result_of(refused.code, refused.message)
        code = reply.split(" ", 1)[0]
        return SendResult(SendStatus.DELIVERED, code if code.isdigit() else "250", "accepted by the mail server")

    async def close(self) -> None:
        return None
