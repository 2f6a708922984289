"""Masking of personal data and secrets, for logs, outboxes and anything shown.

Phone numbers, emails, openids and tokens never appear whole outside the store and
the provider call.
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlsplit

PHONE_RE = re.compile(r"(?<![\w+])(\+?\d{1,3}[- ]?)?(1\d{2})\d{4}(\d{4})(?!\w)")
EMAIL_RE = re.compile(r"\b([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})\b")
# WeChat openids are 28 characters starting with 'o' (unionids likewise with 'o').
OPENID_RE = re.compile(r"\bo[A-Za-z0-9_-]{27}\b")
_DIGITS_RE = re.compile(r"\d{7}")
BEARER_RE = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+")


def user_ref(user_id: str) -> str:
    """A user id's stand-in in logs: 12 hex characters of a hash, the same in every
    process and release. ``herald users history`` prints it beside the user, so a log
    line can be matched to a user without the log naming them."""
    return hashlib.blake2b(user_id.encode(), digest_size=6, person=b"herald.user").hexdigest()


def mask_phone(phone: str) -> str:
    digits = phone.lstrip("+")
    if len(digits) < 7:
        return "*" * len(phone)
    prefix = "+" if phone.startswith("+") else ""
    return f"{prefix}{digits[:-8] if len(digits) > 11 else digits[:3]}****{digits[-4:]}"


def mask_email(email: str) -> str:
    local, _, domain = email.partition("@")
    return f"{local[:1]}***@{domain}" if domain else "***"


def mask_token(token: str) -> str:
    """Enough to tell two tokens apart in a log, never enough to use one."""
    if len(token) <= 8:
        return "*" * len(token)
    return f"{token[:4]}…({len(token)})"


def mask_text(text: str) -> str:
    """Mask whatever looks like a phone, email, openid or bearer token in free text.

    Runs on every string of every log event, so each pattern is tried only when the
    text could hold it.
    """
    if len(text) < 7:
        return text
    if "earer" in text or "EARER" in text:
        text = BEARER_RE.sub(lambda m: m.group(1) + "***", text)
    if "@" in text:
        text = EMAIL_RE.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", text)
    if len(text) >= 28:
        text = OPENID_RE.sub(lambda m: mask_token(m.group(0)), text)
    if _DIGITS_RE.search(text):
        text = PHONE_RE.sub(lambda m: f"{m.group(1) or ''}{m.group(2)}****{m.group(3)}", text)
    return text


def redacted_url(url: str) -> str:
    """A store URL without its user and password, for logs, errors and settings dumps
    (a URL that does not parse is not shown at all)."""
    try:
        parts = urlsplit(url)
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<redis url>"
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"
