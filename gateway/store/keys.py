"""Every Redis key Herald writes, in one place, with its lifetime.

Per-user keys share the hash tag ``{u:<user_id>}`` so that one user's state lives in one
Redis Cluster slot and one Lua script can change it atomically. A message and its
timeline share ``{<message_id>}`` for the same reason. User ids cannot contain braces
(request validation refuses them), so a tag can never be broken open.

| key                                   | type   | lifetime                                  |
|---------------------------------------|--------|-------------------------------------------|
| herald:{u:<user>}:profile             | hash   | profile_ttl, renewed on every write       |
| herald:{u:<user>}:ix                  | list   | the longest CS window, renewed on write   |
| herald:idem:<bu>:<request_id>         | string | the policy's idempotency_window           |
| herald:msg:{<message_id>}             | string | the policy's message_retention            |
| herald:msg:{<message_id>}:ev          | list   | the policy's message_retention            |
| herald:msg:{<message_id>}:status      | string | the policy's message_retention            |
| herald:ks                             | hash   | none: a switch lives until cleared; its   |
|                                       |        | own expiry is applied when read           |
| herald:ks:audit                       | list   | none: capped to KILL_AUDIT_KEEP entries   |
| herald:due                            | zset   | none: members are removed when released   |
"""

from __future__ import annotations

PREFIX = "herald"
KILL_SWITCHES = f"{PREFIX}:ks"
KILL_AUDIT = f"{PREFIX}:ks:audit"
KILL_AUDIT_KEEP = 10_000
DUE = f"{PREFIX}:due"


def user_tag(user_id: str) -> str:
    return f"{{u:{user_id}}}"


def user_profile(user_id: str) -> str:
    return f"{PREFIX}:{user_tag(user_id)}:profile"


def user_interactions(user_id: str) -> str:
    return f"{PREFIX}:{user_tag(user_id)}:ix"


def idempotency(bu: str, request_id: str) -> str:
    return f"{PREFIX}:idem:{bu}:{request_id}"


def message(message_id: str) -> str:
    return f"{PREFIX}:msg:{{{message_id}}}"


def message_events(message_id: str) -> str:
    return f"{PREFIX}:msg:{{{message_id}}}:ev"


def message_status(message_id: str) -> str:
    return f"{PREFIX}:msg:{{{message_id}}}:status"
