"""CampaignService: campaigns over gRPC (conversions here, the work in
gateway.core.campaigns)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import grpc

from gateway.api.auth import Credentials
from gateway.api.convert import content_of, dt_to_ts, ts_to_dt
from gateway.api.servicers import _answer, _Base
from gateway.core import funnel
from gateway.core.campaigns import Campaigns, CampaignSpec, CampaignView
from gateway.core.conversions import Conversion, Conversions
from gateway.core.preview import Preview, preview
from gateway.errors import InvalidArgument
from gateway.metrics import Metrics
from gateway.policy.holder import PolicyHolder
from gateway.store.base import Store
from gateway.values.campaigns import Campaign, TestPlan, Variant
from herald.v1 import campaign_pb2, campaign_pb2_grpc


def spec_of(message: campaign_pb2.CampaignSpec) -> CampaignSpec:
    variants = []
    for item in message.variants:
        variants.append(Variant(item.name, item.weight, dict(item.params), content_of(item)))
    test = None
    if message.HasField("test"):
        wait = message.test.wait
        if not 0 <= wait.nanos < 1_000_000_000 or wait.seconds < 0:
            raise InvalidArgument("campaign.test.wait", "is not a valid duration")
        test = TestPlan(message.test.sample, wait.ToTimedelta(), message.test.metric or "click_rate")
    start_at = ts_to_dt(message, "start_at")
    deadline = ts_to_dt(message, "deadline")
    return CampaignSpec(
        campaign_id=message.campaign_id,
        scenario=message.scenario,
        audience=message.audience,
        variants=tuple(variants),
        params=dict(message.params),
        holdout=message.holdout,
        start_at=start_at,
        deadline=deadline,
        priority=message.priority if message.HasField("priority") else None,
        description=message.description,
        test=test,
    )


def _spec(campaign: Campaign) -> campaign_pb2.CampaignSpec:
    out = campaign_pb2.CampaignSpec(
        campaign_id=campaign.campaign_id,
        scenario=campaign.scenario,
        audience=campaign.audience,
        holdout=campaign.holdout,
        priority=campaign.priority,
        description=campaign.description,
    )
    for variant in campaign.variants:
        item = out.variants.add(name=variant.name, weight=variant.weight, params=variant.params)
        if variant.content is not None:
            item.content.title, item.content.body, item.content.url = (
                variant.content.title,
                variant.content.body,
                variant.content.url,
            )
    if campaign.test is not None:
        out.test.sample, out.test.metric = campaign.test.sample, campaign.test.metric
        out.test.wait.FromTimedelta(campaign.test.wait)
    if campaign.start_at is not None:
        out.start_at.CopyFrom(dt_to_ts(campaign.start_at))
    if campaign.deadline is not None:
        out.deadline.CopyFrom(dt_to_ts(campaign.deadline))
    return out


def _row(row: funnel.Row) -> campaign_pb2.FunnelRow:
    return campaign_pb2.FunnelRow(
        variant=row.variant,
        targeted=row.targeted,
        suppressed=row.suppressed,
        scheduled=row.scheduled,
        accepted=row.accepted,
        sent=row.sent,
        delivered=row.delivered,
        failed=row.failed,
        clicked=row.clicked,
        converted=row.converted,
        unsubscribed=row.unsubscribed,
        reach_rate=row.reach_rate,
        click_rate=row.click_rate,
        conversion_rate=row.conversion_rate,
        push_effect=row.push_effect,
        conversion_value=row.conversion_value,
    )


def campaign_message(campaign: Campaign, view: CampaignView | None = None) -> campaign_pb2.Campaign:
    out = campaign_pb2.Campaign(
        spec=_spec(campaign),
        state=campaign_pb2.CampaignState.Value(f"CAMPAIGN_STATE_{campaign.state.value}"),
        phase=campaign.phase,
        winner=campaign.winner,
        paused_because=campaign.paused_because,
    )
    out.created_at.CopyFrom(dt_to_ts(campaign.created_at))
    times = (
        ("started_at", campaign.started_at),
        ("finished_at", campaign.finished_at),
        ("tested_at", campaign.tested_at),
    )
    for name, when in times:
        if when is not None:
            getattr(out, name).CopyFrom(dt_to_ts(when))
    if view is not None:
        out.progress.scanned = sum(p.scanned for p in view.progress)
        out.progress.matched = sum(p.matched for p in view.progress)
        out.progress.shards_done = sum(1 for p in view.progress if p.done)
        out.progress.shards = len(view.progress)
        out.progress.skipped = sum(p.errors for p in view.progress)
        out.funnel.extend(_row(row) for row in view.funnel)
        out.holdout_conversion_rate, out.lift = funnel.lift(view.funnel)
    return out


def _preview_message(found: Preview) -> campaign_pb2.PreviewAudienceResponse:
    out = campaign_pb2.PreviewAudienceResponse(
        read=found.read, matched=found.matched, estimate=found.estimate, exact=found.exact, canonical=found.canonical
    )
    for user in found.users:
        out.users.add(user_id=user.user_id, tier=user.tier, tags=user.tags, channels=user.channels)
    return out


class CampaignServicer(_Base, campaign_pb2_grpc.CampaignServiceServicer):
    def __init__(
        self,
        campaigns: Campaigns,
        conversions: Conversions,
        store: Store,
        credentials: Callable[[], Credentials],
        policies: PolicyHolder,
        metrics: Metrics,
        now: Callable[[], datetime],
    ) -> None:
        super().__init__(credentials, policies, metrics)
        self._campaigns = campaigns
        self._conversions = conversions
        self._store = store
        self._now = now

    @_answer("CreateCampaign")
    async def CreateCampaign(
        self, request: campaign_pb2.CreateCampaignRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.Campaign:
        bu = self.authenticate(context)
        if not request.HasField("campaign"):
            raise InvalidArgument("campaign", "is required")
        return campaign_message(await self._campaigns.create(bu, spec_of(request.campaign)))

    @_answer("GetCampaign")
    async def GetCampaign(
        self, request: campaign_pb2.GetCampaignRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.Campaign:
        bu = self.authenticate(context)
        view = await self._campaigns.get(bu, request.campaign_id)
        return campaign_message(view.campaign, view)

    @_answer("ListCampaigns")
    async def ListCampaigns(
        self, request: campaign_pb2.ListCampaignsRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.ListCampaignsResponse:
        bu = self.authenticate(context)
        found = await self._campaigns.list(bu, request.limit)
        return campaign_pb2.ListCampaignsResponse(campaigns=[campaign_message(c) for c in found])

    async def _change(
        self, action: str, request: campaign_pb2.CampaignAction, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.Campaign:
        bu = self.authenticate(context)
        return campaign_message(await self._campaigns.change(bu, request.campaign_id, action))

    @_answer("StartCampaign")
    async def StartCampaign(
        self, request: campaign_pb2.CampaignAction, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.Campaign:
        return await self._change("start", request, context)

    @_answer("PauseCampaign")
    async def PauseCampaign(
        self, request: campaign_pb2.CampaignAction, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.Campaign:
        return await self._change("pause", request, context)

    @_answer("ResumeCampaign")
    async def ResumeCampaign(
        self, request: campaign_pb2.CampaignAction, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.Campaign:
        return await self._change("resume", request, context)

    @_answer("CancelCampaign")
    async def CancelCampaign(
        self, request: campaign_pb2.CampaignAction, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.Campaign:
        return await self._change("cancel", request, context)

    @_answer("RecordConversion")
    async def RecordConversion(
        self, request: campaign_pb2.RecordConversionRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.RecordConversionResponse:
        bu = self.authenticate(context)
        conversion = Conversion(
            user_id=request.user_id,
            campaign_id=request.campaign_id,
            message_id=request.message_id,
            conversion_id=request.conversion_id,
            value_minor=request.value_minor,
            at=ts_to_dt(request, "at"),
        )
        found = await self._conversions.record(bu, conversion)
        return campaign_pb2.RecordConversionResponse(
            attributed=found.attributed,
            campaign_id=found.campaign_id,
            variant=found.variant,
            via=found.via,
            detail=found.detail,
            counted=found.counted,
        )

    @_answer("PreviewAudience")
    async def PreviewAudience(
        self, request: campaign_pb2.PreviewAudienceRequest, context: grpc.aio.ServicerContext
    ) -> campaign_pb2.PreviewAudienceResponse:
        self.authenticate(context)
        if not 0 <= request.sample <= 20:
            raise InvalidArgument("sample", "must be 0-20")
        found = await preview(self._store, self.policies.current, request.audience, request.sample or 5, self._now())
        return _preview_message(found)
