"""The gRPC servicers: authenticate, convert, call the core, convert back.

Errors become gRPC statuses in one place (``_answer``), through ``errors.status_of``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, Literal, TypeVar

import grpc
import msgspec
import structlog

from gateway.api import convert
from gateway.api.auth import Credentials
from gateway.core.history import HistoryQuery
from gateway.core.pipeline import PushPipeline
from gateway.core.profile_rules import compute_tier
from gateway.core.trace import render
from gateway.core.users import Users
from gateway.errors import HeraldError, InvalidArgument, PermissionDenied, ResourceExhausted, status_of
from gateway.logs import get_logger
from gateway.metrics import Metrics
from gateway.policy.holder import PolicyHolder
from gateway.values.claims import PushInput
from gateway.values.decisions import PushAnswer
from gateway.values.profiles import CONTACT_SECTIONS, LABEL_SECTIONS
from herald.v1 import profile_pb2, profile_pb2_grpc, push_pb2, push_pb2_grpc

log = get_logger(__name__)
R = TypeVar("R")
MAX_BATCH = 1000
BATCH_CONCURRENCY = 64
RETRY_HINT_MS = 100

Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[R]]


def _answer(method: str) -> Callable[[Handler[R]], Handler[R]]:
    """Turn Herald errors into gRPC statuses and count them; hide internal faults."""

    def wrap(handler: Handler[R]) -> Handler[R]:
        @wraps(handler)
        async def run(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
            structlog.contextvars.clear_contextvars()
            try:
                return await handler(self, request, context)
            except HeraldError as exc:
                code = status_of(exc)
                self.metrics.refused.labels(method, code.name).inc()
                log.info("refused", method=method, code=code.name, error=exc.message)
                await context.abort(code, exc.message)
            except (asyncio.CancelledError, grpc.aio.AbortError):
                raise
            except Exception:
                self.metrics.refused.labels(method, "INTERNAL").inc()
                log.exception("internal_error", method=method)
                await context.abort(grpc.StatusCode.INTERNAL, "internal error; the gateway logged the details")
            raise AssertionError("unreachable")

        return run

    return wrap


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else value.decode()
    return None


class _Base:
    def __init__(self, credentials: Callable[[], Credentials], policies: PolicyHolder, metrics: Metrics) -> None:
        self._credentials = credentials
        self.policies = policies
        self.metrics = metrics

    def authenticate(self, context: grpc.aio.ServicerContext) -> str:
        bu = self._credentials().authenticate(_authorization(context))
        if bu not in self.policies.current.business_units:
            raise PermissionDenied(f"the API key belongs to '{bu}', which the serving policy does not define")
        structlog.contextvars.bind_contextvars(bu=bu)
        return bu


class Admission:
    """The door: at most ``limit`` Push and PushBatch calls answered at once by this
    process. One more is turned away at once (RESOURCE_EXHAUSTED with a retry hint),
    so callers back off instead of waiting in a queue until their deadlines pass."""

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self.busy = 0
        self._metrics = metrics

    def enter(self, method: str, context: grpc.aio.ServicerContext) -> None:
        if self.busy >= self.limit:
            self._metrics.shed.labels(method).inc()
            context.set_trailing_metadata((("grpc-retry-pushback-ms", str(RETRY_HINT_MS)),))
            raise ResourceExhausted(
                f"the gateway is at its limit of {self.limit} calls in flight; retry in about {RETRY_HINT_MS} ms "
                "with exponential backoff (or send to another replica)"
            )
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            raise ResourceExhausted(
                "the call's deadline passed before the gateway could take it; retry with a later one"
            )
        self.busy += 1
        self._metrics.in_flight.set(self.busy)

    def leave(self) -> None:
        self.busy -= 1
        self._metrics.in_flight.set(self.busy)


def _item_error(index: int, exc: HeraldError) -> push_pb2.PushResponse:
    code = status_of(exc)
    field = getattr(exc, "field", "")
    return push_pb2.PushResponse(
        error=push_pb2.ItemError(
            code=code.name,
            message=f"requests[{index}].{exc.message}" if field else exc.message,
            field=f"requests[{index}].{field}" if field else "",
        )
    )


class PushServicer(_Base, push_pb2_grpc.PushServiceServicer):
    def __init__(
        self,
        pipeline: PushPipeline,
        credentials: Callable[[], Credentials],
        policies: PolicyHolder,
        metrics: Metrics,
        admission: Admission,
    ) -> None:
        super().__init__(credentials, policies, metrics)
        self._pipeline = pipeline
        self._door = admission
        self._push_seconds = metrics.decision_seconds.labels("Push")
        self._batch_seconds = metrics.decision_seconds.labels("PushBatch")

    @_answer("Push")
    async def Push(self, request: push_pb2.PushRequest, context: grpc.aio.ServicerContext) -> push_pb2.PushResponse:
        began = time.perf_counter()
        self._door.enter("Push", context)
        try:
            bu = self.authenticate(context)
            structlog.contextvars.bind_contextvars(request_id=request.request_id[:128])
            answer = await self._pipeline.push(bu, convert.push_input(request))
            return convert.push_response(answer)
        finally:
            self._door.leave()
            self._push_seconds.observe(time.perf_counter() - began)

    @_answer("PushBatch")
    async def PushBatch(
        self, request: push_pb2.PushBatchRequest, context: grpc.aio.ServicerContext
    ) -> push_pb2.PushBatchResponse:
        began = time.perf_counter()
        self._door.enter("PushBatch", context)
        try:
            bu = self.authenticate(context)
            count = len(request.requests)
            if count == 0:
                raise InvalidArgument("requests", "is empty; send 1 to 1000 requests")
            if count > MAX_BATCH:
                raise InvalidArgument("requests", f"has {count}; at most {MAX_BATCH} per batch, split it")
            inputs: list[PushInput | HeraldError] = []
            for raw in request.requests:
                try:
                    inputs.append(convert.push_input(raw))
                except HeraldError as exc:
                    inputs.append(exc)
            valid = [i for i in inputs if not isinstance(i, HeraldError)]
            answers = iter(await self._pipeline.push_many(bu, valid))
            responses = []
            for index, given in enumerate(inputs):
                answer = given if isinstance(given, HeraldError) else next(answers)
                if isinstance(answer, HeraldError):
                    self.metrics.refused.labels("PushBatch.item", status_of(answer).name).inc()
                    responses.append(_item_error(index, answer))
                else:
                    responses.append(convert.push_response(answer))
            return push_pb2.PushBatchResponse(responses=responses)
        finally:
            self._door.leave()
            self._batch_seconds.observe(time.perf_counter() - began)

    @_answer("GetMessage")
    async def GetMessage(
        self, request: push_pb2.GetMessageRequest, context: grpc.aio.ServicerContext
    ) -> push_pb2.Message:
        bu = self.authenticate(context)
        if not request.message_id:
            raise InvalidArgument("message_id", "is required")
        return convert.message(await self._pipeline.get_message(bu, request.message_id))

    @_answer("ListMessages")
    async def ListMessages(
        self, request: push_pb2.ListMessagesRequest, context: grpc.aio.ServicerContext
    ) -> push_pb2.ListMessagesResponse:
        bu = self.authenticate(context)
        query = HistoryQuery(
            user_id=request.user_id,
            since=convert.ts_to_dt(request, "since"),
            until=convert.ts_to_dt(request, "until"),
            scenario=request.scenario,
            outcome=convert.outcome_from_pb(request.outcome, "outcome"),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        records, token = await self._pipeline.list_messages(bu, query)
        return push_pb2.ListMessagesResponse(messages=[convert.message(r) for r in records], next_page_token=token)

    @_answer("GetPolicyInfo")
    async def GetPolicyInfo(
        self, request: push_pb2.GetPolicyInfoRequest, context: grpc.aio.ServicerContext
    ) -> push_pb2.PolicyInfo:
        bu = self.authenticate(context)
        policy = self.policies.current
        info = push_pb2.PolicyInfo(
            version=policy.version,
            business_unit=bu,
            scenarios=convert.scenario_infos(bu, policy.scenarios, policy.business_units[bu].scenarios),
        )
        info.loaded_at.CopyFrom(convert.dt_to_ts(policy.loaded_at))
        return info

    @_answer("Explain")
    async def Explain(
        self, request: push_pb2.ExplainRequest, context: grpc.aio.ServicerContext
    ) -> push_pb2.ExplainResponse:
        bu = self.authenticate(context)
        at = convert.ts_to_dt(request, "at")
        decision = await self._pipeline.explain(bu, convert.push_input(request.request), at)
        policy = self.policies.current
        answer = PushAnswer(
            message_id="",
            category=policy.scenarios[request.request.scenario].category,
            outcome=decision.outcome,
            reason=decision.reason,
            detail=decision.detail,
            plan=decision.plan,
            scheduled_at=decision.scheduled_at,
            policy_version=policy.version,
        )
        return push_pb2.ExplainResponse(decision=convert.push_response(answer), trace=render(decision.trace))


class ProfileServicer(_Base, profile_pb2_grpc.ProfileServiceServicer):
    def __init__(
        self,
        users: Users,
        credentials: Callable[[], Credentials],
        policies: PolicyHolder,
        metrics: Metrics,
        now: Callable[[], Any],
    ) -> None:
        super().__init__(credentials, policies, metrics)
        self._users = users
        self._now = now

    def _grant(self, context: grpc.aio.ServicerContext, need: Literal["read", "write"]) -> str:
        bu = self.authenticate(context)
        self._granted(bu, need)
        return bu

    def _granted(self, bu: str, need: Literal["read", "write", "tag"]) -> None:
        granted = self.policies.current.business_units[bu].profiles
        # write covers every section; tag only the labels (tags, attributes).
        if need not in granted and not (need == "tag" and "write" in granted):
            what = "write tags and attributes of" if need == "tag" else need
            raise PermissionDenied(
                f"business unit '{bu}' may not {what} profiles; the policy grants it with "
                f"business_units.{bu}.profiles: [{need}]" + (" (or [write])" if need == "tag" else "")
            )

    def _patch(self, bu: str, request: profile_pb2.UpsertUserRequest, field: str = "user") -> dict[str, Any]:
        """The sections an upsert writes, each allowed by the caller's grants."""
        patch = convert.profile_patch(request, field)
        if any(name in CONTACT_SECTIONS for name in patch) or not patch:
            self._granted(bu, "write")
        if any(name in LABEL_SECTIONS for name in patch):
            self._granted(bu, "tag")
        return patch

    def _user(self, profile: Any) -> profile_pb2.User:
        return convert.user(profile, compute_tier(profile.rfm, self.policies.current.tiers, self._now()))

    @_answer("UpsertUser")
    async def UpsertUser(
        self, request: profile_pb2.UpsertUserRequest, context: grpc.aio.ServicerContext
    ) -> profile_pb2.User:
        bu = self.authenticate(context)
        return self._user(await self._users.upsert(request.user.user_id, self._patch(bu, request)))

    @_answer("UpsertUsers")
    async def UpsertUsers(
        self, request: profile_pb2.UpsertUsersRequest, context: grpc.aio.ServicerContext
    ) -> profile_pb2.UpsertUsersResponse:
        bu = self.authenticate(context)
        if not set(self.policies.current.business_units[bu].profiles) & {"write", "tag"}:
            self._granted(bu, "write")
        count = len(request.requests)
        if count > MAX_BATCH:
            raise InvalidArgument("requests", f"has {count}; at most {MAX_BATCH} per batch, split it")
        gate = asyncio.Semaphore(BATCH_CONCURRENCY)

        async def one(item: profile_pb2.UpsertUserRequest) -> profile_pb2.UpsertUserResult:
            async with gate:
                try:
                    profile = await self._users.upsert(item.user.user_id, self._patch(bu, item))
                    return profile_pb2.UpsertUserResult(user=self._user(profile))
                except HeraldError as exc:
                    return profile_pb2.UpsertUserResult(error_code=status_of(exc).name, error_message=exc.message)

        results = await asyncio.gather(*(one(item) for item in request.requests))
        return profile_pb2.UpsertUsersResponse(results=results)

    @_answer("GetUser")
    async def GetUser(self, request: profile_pb2.GetUserRequest, context: grpc.aio.ServicerContext) -> profile_pb2.User:
        self._grant(context, "read")
        return self._user(await self._users.get(request.user_id))

    @_answer("RecordInteraction")
    async def RecordInteraction(
        self, request: profile_pb2.RecordInteractionRequest, context: grpc.aio.ServicerContext
    ) -> profile_pb2.RecordInteractionResponse:
        self._grant(context, "write")
        window = await self._users.record_interaction(
            request.user_id, convert.interaction_kind(request.kind), convert.ts_to_dt(request, "at")
        )
        response = profile_pb2.RecordInteractionResponse()
        if window is not None:
            response.cs_window_open_until.CopyFrom(convert.dt_to_ts(window.open_until))
            response.cs_window_quota = -1 if window.quota is None else window.quota
        return response

    @_answer("SetOptOut")
    async def SetOptOut(
        self, request: profile_pb2.SetOptOutRequest, context: grpc.aio.ServicerContext
    ) -> profile_pb2.User:
        self._grant(context, "write")
        profile = await self._users.set_opt_out(
            request.user_id,
            convert.category_from_pb(request.category, "category"),
            convert.channel_from_pb(request.channel, "channel"),
            request.opted_out,
            request.source,
        )
        return self._user(profile)

    @_answer("ExportUser")
    async def ExportUser(
        self, request: profile_pb2.ExportUserRequest, context: grpc.aio.ServicerContext
    ) -> profile_pb2.ExportUserResponse:
        # Every unit's messages are in it: the grant that may change the profile, not read it.
        self._grant(context, "write")
        export = await self._users.export(request.user_id)
        return convert.export(export, None if export.profile is None else self._user(export.profile))

    @_answer("DeleteUser")
    async def DeleteUser(
        self, request: profile_pb2.DeleteUserRequest, context: grpc.aio.ServicerContext
    ) -> profile_pb2.DeleteUserResponse:
        self._grant(context, "write")
        erased = await self._users.delete(request.user_id)
        return profile_pb2.DeleteUserResponse(**msgspec.structs.asdict(erased))
