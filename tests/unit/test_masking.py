"""No phone, email, openid or token reaches a log line."""

from __future__ import annotations

import io
import json
import logging

import structlog

from gateway.logs import configure, mask_personal_data
from gateway.masking import mask_email, mask_phone, mask_text, mask_token

OPENID = "oAbCdEfGhIjKlMnOpQrStUvWxYz1"


def test_maskers() -> None:
    assert mask_phone("+8613800138000") == "+86138****8000"
    assert mask_phone("13800138000") == "138****8000"
    assert mask_email("li.lei@example.com") == "l***@example.com"
    assert mask_token(OPENID) == "oAbC…(28)"
    assert mask_token("short") == "*****"


def test_free_text_is_masked() -> None:
    text = f"user {OPENID} at +86 13800138000 or 13912345678, mail li.lei@example.com, Bearer hk_order_abc.def"
    masked = mask_text(text)
    for secret in (OPENID, "13800138000", "13912345678", "li.lei@example.com", "hk_order_abc.def"):
        assert secret not in masked
    assert "oAbC…(28)" in masked and "l***@example.com" in masked and "Bearer ***" in masked


def test_order_ids_and_amounts_are_left_alone() -> None:
    assert mask_text("order O-20261111-0001 paid ¥1999.00, 3 items") == "order O-20261111-0001 paid ¥1999.00, 3 items"


def test_processor_masks_by_key_and_in_nested_values() -> None:
    event = {
        "event": "send",
        "phone": "+8613800138000",
        "email": "li.lei@example.com",
        "openid": OPENID,
        "api_key": "hk_order_secret",
        "access_token": "ACCESS_TOKEN_VALUE_123",
        "detail": {"to": "13800138000", "list": [OPENID]},
    }
    out = mask_personal_data(None, "info", dict(event))
    flat = json.dumps(out, ensure_ascii=False)
    for secret in ("13800138000", "li.lei@example.com", OPENID, "hk_order_secret", "ACCESS_TOKEN_VALUE_123"):
        assert secret not in flat
    assert out["api_key"] == "***" and out["access_token"] == "***"


def test_configured_logger_writes_masked_json() -> None:
    stream = io.StringIO()
    configure("INFO", json=True)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(stream))
    try:
        structlog.get_logger("t").info("decision", request_id="r-1", detail=f"no WeChat for {OPENID}")
        line = json.loads(stream.getvalue().strip())
        assert line["event"] == "decision" and line["request_id"] == "r-1" and OPENID not in line["detail"]
        assert line["level"] == "info" and "timestamp" in line
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()
