"""What each provider refuses, or shows otherwise than written, in a rendered content
block: the content rules of docs/providers.md as code, for ``herald preview``.

The adapters send a block as it is rendered: a value that breaks one of these rules is
refused by the provider at send time (WeChat 47003, Alibaba's parameter errors, FCM's
size limit), which fails that delivery or takes the next channel. Checking the block
beforehand, with the same rules, shows it while the policy is being written.

Each finding is ``(level, where, text)``: ``error`` when the send would fail,
``warning`` when it would go out otherwise than written (a field WeChat drops, an empty
text).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from gateway.values.domain import Channel

# WeChat template messages since May 2023: a field's value is at most 20 characters on
# one line; fields of templates from WeChat's category library are typed by their key's
# prefix (thing1, character_string2, phrase3, ...), some with their own length.
TEMPLATE_VALUE_MAX = 20
TYPED_VALUE_MAX = {"thing": 20, "character_string": 32, "phrase": 5}
TYPED_KEY = re.compile(r"^(thing|character_string|phrase|time|amount|number|phone_number|car_number|const)\d+$")
DROPPED_TEMPLATE_FIELDS = ("first", "remark")
# Alibaba Cloud SMS: a variable of a notification or promotion template is 1 to 35
# characters (a verification code 4 to 6).
SMS_VALUE_MAX = 35
# FCM (and APNs) take about 4 KB a notification: title, body and link together.
PUSH_BYTES_MAX = 4000


class Finding(NamedTuple):
    level: str  # "error" or "warning"
    where: str  # the key in the block: "fields.keyword1", "params.order", "subject"
    text: str


def _wechat_template(block: Mapping[str, Any]) -> Iterator[Finding]:
    for key, value in (block.get("fields") or {}).items():
        where = f"fields.{key}"
        text = str(value)
        if key in DROPPED_TEMPLATE_FIELDS:
            yield Finding("warning", where, f"WeChat no longer shows the {key} field (since May 2023): drop it")
            continue
        if "\n" in text or "\r" in text:
            yield Finding("error", where, "has a line break; WeChat takes a field's value on one line (47003)")
        typed = TYPED_KEY.match(key)
        limit = TYPED_VALUE_MAX.get(typed.group(1), 0) if typed else TEMPLATE_VALUE_MAX
        if limit and len(text) > limit:
            kind = f"a {typed.group(1)} field" if typed else "a field"
            yield Finding("error", where, f"is {len(text)} characters; WeChat takes at most {limit} in {kind} (47003)")
        if not text:
            yield Finding("warning", where, "is empty (an optional parameter not given?)")


def _sms(block: Mapping[str, Any]) -> Iterator[Finding]:
    for key, value in (block.get("params") or {}).items():
        text = str(value)
        where = f"params.{key}"
        if len(text) > SMS_VALUE_MAX:
            yield Finding(
                "error",
                where,
                f"is {len(text)} characters; Alibaba Cloud SMS takes at most {SMS_VALUE_MAX} a variable "
                "(isv.PARAM_LENGTH_LIMIT)",
            )
        elif not text:
            yield Finding("warning", where, "is empty; Alibaba Cloud SMS variables are 1 to 35 characters")


def _email(block: Mapping[str, Any]) -> Iterator[Finding]:
    subject = str(block.get("subject", ""))
    if "\n" in subject or "\r" in subject:
        yield Finding("error", "subject", "has a line break: a mail header cannot hold one; the send fails")
    for key in ("subject", "text"):
        if not str(block.get(key, "")).strip():
            yield Finding("warning", key, "is empty")


def _app_push(block: Mapping[str, Any]) -> Iterator[Finding]:
    for key in ("title", "body"):
        if not str(block.get(key, "")).strip():
            yield Finding("warning", key, "is empty: the notification shows nothing there")
    size = sum(len(str(block.get(key, "")).encode()) for key in ("title", "body", "url"))
    if size > PUSH_BYTES_MAX:
        yield Finding(
            "error", "body", f"title, body and url are {size:,} bytes; FCM and APNs take about 4 KB a notification"
        )


def _text(block: Mapping[str, Any]) -> Iterator[Finding]:
    if "text" in block and not str(block["text"]).strip():
        yield Finding("warning", "text", "is empty")


CHECKS = {
    Channel.WECHAT_TEMPLATE: _wechat_template,
    Channel.WECHAT_CS: _text,
    Channel.WECHAT_MASS: _text,
    Channel.SMS: _sms,
    Channel.EMAIL: _email,
    Channel.APP_PUSH: _app_push,
}


def content_findings(channel: Channel, block: Mapping[str, Any]) -> list[Finding]:
    """What the provider of ``channel`` would refuse or show otherwise in ``block``."""
    return list(CHECKS[channel](block))
