"""``Explain``: what Push would decide, with everything a person needs to see why (pure).

Beyond the decision's own trace: the user's RFM tier, every cap of the claim's category
with its counter, the claims already held for the user with their scores, and, for a
claim that would be held, what would become of it when it is released (its pool
decided at that time on the user's state as it stands, with the rivals due by then).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from gateway.core.caps import keep_for, rules_for
from gateway.core.decide import Context, HeldClaim, decide_arrival, decide_release, score
from gateway.values.claims import Claim
from gateway.values.decisions import Decision
from gateway.values.domain import Outcome
from gateway.values.records import Step
from gateway.values.state import Hold, apply_mutations

EXPLAIN_ID = "m_explain"


def explain_arrival(claim: Claim, ctx: Context, held: Sequence[HeldClaim]) -> Decision:
    decision = decide_arrival(claim, EXPLAIN_ID, ctx)
    tz = ctx.tz.key
    extra = [Step("tier", (ctx.tier,))]
    for rule in rules_for(ctx.policy, claim.category, claim.bu, ctx.tier):
        extra.append(
            Step("cap", (rule.label, rule.window_text, rule.used(ctx.state.sent, ctx.now, ctx.tz), rule.limit))
        )
    due = {h.message_id: h.due for h in ctx.state.held}
    rivals = [
        [
            h.message_id,
            h.claim.scenario,
            h.claim.bu,
            score(h.claim, ctx.policy, ctx.tier)[0],
            due[h.message_id].timestamp(),
        ]
        for h in held
        if h.message_id in due
    ]
    extra.append(Step("held", (rivals, tz)))
    detail = decision.detail
    at = decision.scheduled_at
    if decision.outcome is Outcome.SCHEDULED and at is not None:
        after = apply_mutations(ctx.state, decision.mutations, ctx.now, keep_for(ctx.policy))
        pooled = any(isinstance(m, Hold) and m.pooled for m in decision.mutations)
        pool = [h for h in held if h.message_id in due and due[h.message_id] <= at]
        verdicts = decide_release([*pool, HeldClaim(EXPLAIN_ID, claim, ctx.now, pooled)], ctx.at(at, after))
        mine = next(d for mid, d in verdicts if mid == EXPLAIN_ID)
        text = f"{mine.outcome}{'/' + mine.reason if mine.reason else ''}: {mine.detail}"
        extra.append(Step("predict", (at.timestamp(), tz, text)))
        detail = f"{detail}; when released: {text}"
    *steps, final = decision.trace
    return msgspec.structs.replace(
        decision,
        detail=detail,
        trace=(*steps, *extra, Step("final", (str(decision.outcome), final.args[1], detail))),
    )
