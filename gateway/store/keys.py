"""Every Redis key Herald writes, in one place, with its lifetime.

Most keys carry their shard's hash tag ``{T}`` (``store.shards``): a user's profile and
state, the idempotent answers of requests for that user, the user's messages, and the
shard's delivery streams, due index and waiting jobs live in one cluster slot, so that
one Lua script commits a decision with its answer and its delivery job, and one script
finishes a delivery (settlement, timeline, status, ack). Keys without a tag are small or
spread by their own names.

| key                                  | type   | lifetime                                    |
|--------------------------------------|--------|---------------------------------------------|
| herald:meta                          | hash   | none: the store's layout (shard count)      |
| herald:{T}:u:<user>                  | hash   | profile_retention, renewed on profile writes; |
|                                      |        | fields: profile sections, opt-outs, ix      |
|                                      |        | (interactions), v and st (arbitration state)|
| herald:{T}:idem:<bu>:<request_id>    | string | the policy's idempotency_window             |
| herald:rid:<bu>:<request_id>         | string | idempotency_window (request id -> body      |
|                                      |        | fingerprint, to spot reuse for another user)|
| herald:{T}:m:<message_id>            | string | the policy's message_retention (decision)   |
| herald:{T}:m:<message_id>:ev         | string | message_retention (later timeline entries)  |
| herald:{T}:m:<message_id>:st         | string | message_retention (where it stands now)     |
| herald:{T}:um:<user>                 | zset   | message_retention after the user's last     |
|                                      |        | message: their message ids scored by        |
|                                      |        | creation (epoch ms); entries older than the |
|                                      |        | retention and past USER_MESSAGES_KEEP are   |
|                                      |        | trimmed on each write                       |
| herald:{T}:users                     | set    | none: the shard's users (audiences); a user |
|                                      |        | found gone or expired during a scan leaves  |
| herald:{T}:tg:<tag>                  | set    | none: the shard's users given the profile   |
|                                      |        | tag; one found without it (since removed,   |
|                                      |        | or gone) leaves during a scan               |
| herald:{T}:due                       | zset   | none: a user leaves it when their pool is   |
|                                      |        | empty; scores are epoch milliseconds        |
| herald:{T}:q:<lane>                  | stream | none: entries are deleted when acked; one   |
|                                      |        | consumer group; lanes basic/reminder/marketing |
| herald:{T}:later                     | zset   | none: jobs waiting for a provider, each     |
|                                      |        | leaves when it goes back to its stream      |
| herald:{T}:parked                    | zset   | none: jobs a kill switch stopped, scored by |
|                                      |        | when they end; each leaves when sent/ended  |
| herald:{T}:dead                      | stream | capped to DEAD_LETTERS_KEEP per shard       |
| herald:ks                            | hash   | none: a switch lives until cleared; its own |
|                                      |        | expiry is applied when read                 |
| herald:ks:audit                      | list   | none: capped to KILL_AUDIT_KEEP entries     |
| herald:ks:changed                    | pubsub | a message on every kill-switch change       |
| herald:{T}:fn:<campaign>             | hash   | CAMPAIGN_RETENTION after its last count: the |
|                                      |        | shard's funnel counters of a campaign       |
| herald:{T}:fn:<campaign>:once        | set    | as above: what was counted once (a click of |
|                                      |        | a user on a message)                        |
| herald:{T}:cmp:<campaign>            | hash   | CAMPAIGN_RETENTION: the shard's scan (p) and|
|                                      |        | its lease (owner, until)                    |
| herald:{cmp}:c:<campaign>            | hash   | CAMPAIGN_RETENTION after its last change:   |
|                                      |        | the campaign (c) and its version (v)        |
| herald:{cmp}:bu:<bu>                 | zset   | none: a unit's campaigns by creation time;  |
|                                      |        | trimmed to CAMPAIGN_RETENTION on each write |
| herald:{cmp}:run                     | set    | none: running campaigns; each leaves when it|
|                                      |        | stops running                               |
| herald:shared:<name>                 | string | set by the writer (a provider token: its    |
|                                      |        | expiry; a lock: a few seconds); the names   |
|                                      |        | are the functions below ``shared``          |
| herald:bucket:<name>                 | hash   | twice the bucket's refill time              |
| herald:outcomes:{<campaign|scenario>} | hash  | 7 days after the last send (auto-stop: the  |
|                                      |        | window's counts)                            |
| herald:outcomes:{<...>}:ring         | string | as above (the window's last outcomes)       |
"""

from __future__ import annotations

import re

from gateway.values.domain import Category

PREFIX = "herald"
META = f"{PREFIX}:meta"
KILL_SWITCHES = f"{PREFIX}:ks"
KILL_AUDIT = f"{PREFIX}:ks:audit"
KILL_AUDIT_KEEP = 10_000
KILL_CHANGED = f"{PREFIX}:ks:changed"
DELIVERY_GROUP = "workers"
DEAD_LETTERS_KEEP = 100_000
# The most recent messages a user's message index keeps (ListMessages, export, delete).
USER_MESSAGES_KEEP = 1_000

# Fields of a user's hash besides the profile sections.
VERSION_FIELD = "v"
STATE_FIELD = "st"
INTERACTIONS_FIELD = "ix"


def user(tag: str, user_id: str) -> str:
    return f"{PREFIX}:{{{tag}}}:u:{user_id}"


def idempotency(tag: str, bu: str, request_id: str) -> str:
    return f"{PREFIX}:{{{tag}}}:idem:{bu}:{request_id}"


def request_index(bu: str, request_id: str) -> str:
    return f"{PREFIX}:rid:{bu}:{request_id}"


def message(tag: str, message_id: str) -> str:
    return f"{PREFIX}:{{{tag}}}:m:{message_id}"


def message_events(tag: str, message_id: str) -> str:
    return f"{PREFIX}:{{{tag}}}:m:{message_id}:ev"


def message_current(tag: str, message_id: str) -> str:
    return f"{PREFIX}:{{{tag}}}:m:{message_id}:st"


def user_messages(tag: str, user_id: str) -> str:
    """The user's message ids by creation time: how their messages are found again
    (ListMessages, export, erasure). Not ``u:<user>:...``: user ids may hold colons."""
    return f"{PREFIX}:{{{tag}}}:um:{user_id}"


def members(tag: str) -> str:
    """Every user of the shard (audiences read it when no tag narrows them down)."""
    return f"{PREFIX}:{{{tag}}}:users"


def labelled(tag: str, label: str) -> str:
    """The users of the shard who were given the profile tag ``label``."""
    return f"{PREFIX}:{{{tag}}}:tg:{label}"


def funnel(tag: str, campaign_id: str) -> str:
    return f"{PREFIX}:{{{tag}}}:fn:{campaign_id}"


def funnel_once(tag: str, campaign_id: str) -> str:
    return f"{PREFIX}:{{{tag}}}:fn:{campaign_id}:once"


def campaign_shard(tag: str, campaign_id: str) -> str:
    return f"{PREFIX}:{{{tag}}}:cmp:{campaign_id}"


# Campaign definitions share one slot (they are few), so a state change updates the
# campaign, its unit's list and the running set in one script.
def campaign(campaign_id: str) -> str:
    return f"{PREFIX}:{{cmp}}:c:{campaign_id}"


def campaigns_of(bu: str) -> str:
    return f"{PREFIX}:{{cmp}}:bu:{bu}"


CAMPAIGNS_RUNNING = f"{PREFIX}:{{cmp}}:run"


def due(tag: str) -> str:
    return f"{PREFIX}:{{{tag}}}:due"


def stream(tag: str, lane: Category) -> str:
    return f"{PREFIX}:{{{tag}}}:q:{lane}"


def later(tag: str) -> str:
    return f"{PREFIX}:{{{tag}}}:later"


def parked(tag: str) -> str:
    return f"{PREFIX}:{{{tag}}}:parked"


def dead(tag: str) -> str:
    return f"{PREFIX}:{{{tag}}}:dead"


def outcomes(key: str) -> str:
    return f"{PREFIX}:outcomes:{{{key}}}"


def outcome_ring(key: str) -> str:
    """Beside ``outcomes(key)``, in its slot: both names begin alike up to the end of the
    key, so their hash tags agree whatever braces the key itself holds."""
    return f"{PREFIX}:outcomes:{{{key}}}:ring"


def shared(name: str) -> str:
    return f"{PREFIX}:shared:{name}"


def clicked(message_id: str) -> str:
    """A shared name: when the user first clicked a campaign message (attribution)."""
    return f"clicked:{message_id}"


def bucket(name: str) -> str:
    return f"{PREFIX}:bucket:{name}"


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


# The keys that live without a TTL, and why (the table above): everything else Herald
# writes expires. Checked against every key of a store by the tests.
LIVES_FOREVER: dict[str, str] = {
    rf"^{PREFIX}:meta$": "the store's layout: read by every gateway at start",
    rf"^{PREFIX}:{{[^}}]+}}:due$": "the shard's due index: a user leaves it when their pool is empty",
    rf"^{PREFIX}:{{[^}}]+}}:users$": "the shard's users: one found gone during an audience scan leaves",
    rf"^{PREFIX}:{{[^}}]+}}:tg:.+$": "a profile tag's users: one found without it during a scan leaves",
    rf"^{PREFIX}:{{[^}}]+}}:q:(basic|reminder|marketing)$": "a delivery stream: entries are deleted when acked",
    rf"^{PREFIX}:{{[^}}]+}}:later$": "jobs waiting for a provider: each leaves when it is queued again",
    rf"^{PREFIX}:{{[^}}]+}}:parked$": "jobs a kill switch keeps: each leaves when sent or ended",
    rf"^{PREFIX}:{{[^}}]+}}:dead$": f"dead letters: capped to {DEAD_LETTERS_KEEP:,} a shard",
    rf"^{PREFIX}:{{cmp}}:bu:.+$": "a unit's campaigns: trimmed to the campaign retention on each write",
    rf"^{PREFIX}:{{cmp}}:run$": "running campaigns: each leaves when it stops running",
    rf"^{PREFIX}:ks$": "kill switches: a switch lives until cleared (its own expiry applies when read)",
    rf"^{PREFIX}:ks:audit$": f"the kill-switch audit: capped to {KILL_AUDIT_KEEP:,} entries",
}
_FOREVER = [re.compile(pattern) for pattern in LIVES_FOREVER]


def lives_forever(key: str) -> bool:
    """Whether ``key`` is one of the few Herald keeps without a TTL."""
    return any(pattern.match(key) for pattern in _FOREVER)
