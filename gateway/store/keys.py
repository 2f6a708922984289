"""Every Redis key Herald writes, in one place, with its lifetime.

Per-user keys share the hash tag ``{u:<user_id>}`` so that one user's state lives in one
Redis Cluster slot and one Lua script can change it atomically. A message and its
timeline share ``{<message_id>}`` for the same reason. User ids cannot contain braces
(request validation refuses them), so a tag can never be broken open.

| key                                   | type   | lifetime                                  |
|---------------------------------------|--------|-------------------------------------------|
| herald:{u:<user>}:profile             | hash   | profile_ttl, renewed on every write       |
| herald:{u:<user>}:ix                  | list   | the longest CS window, renewed on write   |
| herald:{u:<user>}:sent                | zset   | reservations by time: the longest cap     |
|                                       |        | window (caps.retention), renewed on write |
| herald:{u:<user>}:sentinfo            | hash   | as :sent (category, channel, unit of each)|
| herald:{u:<user>}:held                | zset   | the user's pending pool: as :sent         |
| herald:{u:<user>}:ver                 | string | as :sent; bumped by every state change    |
| herald:{u:<user>}:dd:<bu>:<key>       | string | the category's dedup_window               |
| herald:idem:<bu>:<request_id>         | string | the policy's idempotency_window           |
| herald:msg:{<message_id>}             | string | the policy's message_retention            |
| herald:msg:{<message_id>}:ev          | list   | the policy's message_retention            |
| herald:msg:{<message_id>}:status      | string | the policy's message_retention            |
| herald:msg:{<message_id>}:final       | string | the policy's message_retention            |
| herald:ks                             | hash   | none: a switch lives until cleared; its   |
|                                       |        | own expiry is applied when read           |
| herald:ks:audit                       | list   | none: capped to KILL_AUDIT_KEEP entries   |
| herald:due                            | zset   | none: a user leaves it when their pool is |
|                                       |        | empty; scores are epoch milliseconds      |
| herald:shared:<name>                  | string | set by the writer (a provider token: its  |
|                                       |        | expiry; a lock: a few seconds); the names |
|                                       |        | are the functions below ``shared``        |
| herald:bucket:<name>                  | hash   | twice the bucket's refill time            |
| herald:deliveries:<CHANNEL>           | stream | none: entries are deleted when acked; a   |
|                                       |        | job waits in its plan's first channel's   |
| herald:deliveries:dead                | stream | capped to DEAD_LETTERS_KEEP entries       |
| herald:deliveries:parked              | zset   | none: jobs a kill switch stopped, scored  |
|                                       |        | by the time they expire; each leaves when |
|                                       |        | sent or expired                           |
| herald:ks:changed                     | pubsub | a message on every kill-switch change     |
| herald:outcomes:<campaign or scenario>| list   | 7 days after the last send (auto-stop)    |
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


def user_sent(user_id: str) -> str:
    return f"{PREFIX}:{user_tag(user_id)}:sent"


def user_sent_info(user_id: str) -> str:
    return f"{PREFIX}:{user_tag(user_id)}:sentinfo"


def user_held(user_id: str) -> str:
    return f"{PREFIX}:{user_tag(user_id)}:held"


def user_version(user_id: str) -> str:
    return f"{PREFIX}:{user_tag(user_id)}:ver"


def user_dedup(user_id: str, bu: str, key: str) -> str:
    return f"{PREFIX}:{user_tag(user_id)}:dd:{bu}:{key}"


def message_final(message_id: str) -> str:
    return f"{PREFIX}:msg:{{{message_id}}}:final"


def outcomes(key: str) -> str:
    return f"{PREFIX}:outcomes:{key}"


def shared(name: str) -> str:
    return f"{PREFIX}:shared:{name}"


def bucket(name: str) -> str:
    return f"{PREFIX}:bucket:{name}"


def deliveries(channel: str) -> str:
    return f"{PREFIX}:deliveries:{channel}"


DELIVERY_GROUP = "workers"
DEAD_LETTERS = f"{PREFIX}:deliveries:dead"
DEAD_LETTERS_KEEP = 100_000
PARKED = f"{PREFIX}:deliveries:parked"
KILL_CHANGED = f"{PREFIX}:ks:changed"


# --- names of shared values (stored under herald:shared:<name>) ---------------------
def openid_index(openid: str) -> str:
    """openid -> user id (profile retention): WeChat callbacks name users by openid."""
    return f"openid:{openid}"


def wechat_message(msgid: str) -> str:
    """WeChat template msgid -> "<message id> <user id>" (3 days), for job reports."""
    return f"wxmsg:{msgid}"


def callback_seen(key: str) -> str:
    """A WeChat callback already handled (10 minutes): WeChat retries."""
    return f"wxcb:{key}"


def receipt_seen(provider: str, receipt_id: str) -> str:
    """A delivery receipt already handled (2 days): providers retry."""
    return f"rc:{provider}:{receipt_id}"


def wechat_token(appid: str) -> str:
    return f"wechat:{appid}:token"


UNSUBSCRIBE_KEY = "unsubscribe:key"
