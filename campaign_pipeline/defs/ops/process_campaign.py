"""The ops of `process_campaign_messages`: a thin shell over `sending` and `store`."""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from campaign_pipeline.clock import utcnow
from campaign_pipeline.defs.executor import send_steps_at_once
from campaign_pipeline.defs.ops.config import CampaignConfig, CampaignShard, ClaimedCampaign
from campaign_pipeline.defs.ops.failures import (
    as_dagster_failures,
    codes_metadata,
    reasons_table,
    send_metadata,
)
from campaign_pipeline.defs.partitions import file_run_under_campaign
from campaign_pipeline.defs.tags import (
    STOPPED_TAG,
)
from campaign_pipeline.errors import CampaignScheduled, CampaignStopped
from campaign_pipeline.lifecycle import STOPPED_STATUSES
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import SqsQueue
from campaign_pipeline.sending import guards
from campaign_pipeline.sending.frequency import cap_for_sending
from campaign_pipeline.sending.lease import Lease, acquire, pause_for_termination
from campaign_pipeline.sending.pacing import rate_per_step
from campaign_pipeline.sending.shard import ShardSend
from campaign_pipeline.sending.stats import SendStats, merge_stats
from campaign_pipeline.sending.stop import describe_stop
from campaign_pipeline.settings import (
    campaign_frequency_cap,
    campaign_max_invalid_fraction,
    campaign_max_messages_per_second,
    campaign_max_rejected,
)
from campaign_pipeline.text import canonical_campaign_id

# How Dagster stops a step: Terminate in the UI (GraphQL terminateRun), or Ctrl-C on `process`.
INTERRUPTS = (dg.DagsterExecutionInterruptedError, KeyboardInterrupt)


def _finished_status(context: dg.OpExecutionContext) -> Any:
    """A run's status if this instance knows it has finished, else None (for a takeover)."""

    def status(run_id: str) -> str | None:
        run = context.instance.get_run_by_id(run_id)
        return run.status.value if run is not None and run.is_finished else None

    return status


def _claim_for_reexecution(
    context: dg.OpExecutionContext, store: CampaignStore, campaign: ClaimedCampaign
) -> None:
    """Hold the campaign in a re-execution that reused another run's claim; fail if busy."""
    if campaign.run_id == context.run_id:
        return
    with as_dagster_failures():
        _, took_over = acquire(
            store.claims,
            campaign.id,
            context.run_id,
            campaign.lease_seconds,
            finished_status=_finished_status(context),
        )
    if took_over:
        context.log.warning(took_over)
    context.log.info(f"Claimed campaign {campaign.id} (claimed by run {campaign.run_id} before)")


def _campaign_id_of_run(context: dg.OpExecutionContext, config: CampaignConfig) -> str:
    """The config's campaign id, which a partitioned run's key must name too."""
    try:
        campaign_id = canonical_campaign_id(config.campaign_id)
    except ValueError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None
    if context.has_partition_key and context.partition_key != campaign_id:
        raise dg.Failure(
            description=f"the run's partition {context.partition_key!r} and its config's "
            f"campaign_id {campaign_id!r} name different campaigns",
            allow_retries=False,
        )
    return campaign_id


def _log_preflight(
    context: dg.OpExecutionContext, campaign_id: str, counted: guards.PreflightCount | None
) -> None:
    if counted is not None:
        sampled = "sampled " if counted.sampled_from else ""
        context.log.info(
            f"Preflight of campaign {campaign_id}: {counted.invalid} of {counted.recipients} "
            f"{sampled}recipients invalid"
        )


@dg.op(out=dg.Out(ClaimedCampaign, is_required=False))
def claim_campaign(
    context: dg.OpExecutionContext, config: CampaignConfig, campaign_store: CampaignStore
) -> Iterator[dg.Output[ClaimedCampaign]]:
    """Move the campaign from asset_generated to ready_to_launch (or resume it) for this run.

    A paused, cancelled or later-scheduled campaign is left alone: the run ends without
    sending, and without failing (an operator's decision is not an error).
    """
    campaign_id = _campaign_id_of_run(context, config)
    with as_dagster_failures():
        # Settings first: a bad one fails the run without touching the campaign.
        default_cap = campaign_max_messages_per_second()
        max_invalid = campaign_max_invalid_fraction()
        try:
            with guards.failing_unsendable(campaign_store.claims, campaign_id):
                claim, took_over = acquire(
                    campaign_store.claims,
                    campaign_id,
                    context.run_id,
                    config.lease_seconds,
                    send_now=config.send_now,
                    finished_status=_finished_status(context),
                )
                cap = guards.check_sendable(claim, default_cap)
        except (CampaignStopped, CampaignScheduled) as left_alone:
            context.instance.add_run_tags(context.run_id, {STOPPED_TAG: str(left_alone)})
            context.log.info(f"Nothing to do: {left_alone}")
            return
        if took_over:
            context.log.warning(took_over)
        file_run_under_campaign(context, campaign_id, claim.name)
        pending = claim.counts["pending"]
        guarded = not (claim.resumed or claim.invalid_accepted) and max_invalid < 1
        deferred = guarded and guards.defers_to_the_send(pending, config.recipients_per_shard)
        if guarded and not deferred:
            lease = Lease(campaign_store.claims, campaign_id, context.run_id, config.lease_seconds)
            counted = guards.preflight(
                campaign_store.audience, lease, claim.message, pending, max_invalid
            )
            _log_preflight(context, campaign_id, counted)
    capped = f", at most {cap:g} messages/s" if cap is not None else ""
    context.log.info(
        f"{'Resumed' if claim.resumed else 'Claimed'} campaign {campaign_id} "
        f"({claim.message.message_type}) with {pending} pending recipients{capped}"
    )
    yield dg.Output(
        ClaimedCampaign(
            message=claim.message,
            resumed=claim.resumed,
            recipients_per_chunk=config.recipients_per_chunk,
            outcomes_per_write=config.outcomes_per_write,
            lease_seconds=config.lease_seconds,
            recipients_per_shard=config.recipients_per_shard,
            run_id=context.run_id,
            max_messages_per_second=cap,
            preflight_max_invalid=max_invalid if deferred else None,
        ),
        metadata={
            "campaign_id": campaign_id,
            "campaign_name": claim.name,
            "message_type": claim.message.message_type,
            "resumed": claim.resumed,
            "pending_recipients": pending,
            **({"max_messages_per_second": dg.MetadataValue.float(cap)} if cap else {}),
        },
    )


@dg.op(out=dg.DynamicOut(CampaignShard))
def plan_shards(
    context: dg.OpExecutionContext, campaign: ClaimedCampaign, campaign_store: CampaignStore
) -> Iterator[dg.DynamicOutput[CampaignShard]]:
    """Split the pending recipients into id ranges, one send step each."""
    with as_dagster_failures():
        id_ranges = campaign_store.audience.id_ranges(campaign.id, campaign.recipients_per_shard)
    # The cap is shared equally by the steps that can send at once, so together they stay
    # under it; steps that do not overlap (a short last shard) then send below it.
    steps = send_steps_at_once(context.run_config, len(id_ranges))
    share = rate_per_step(campaign.max_messages_per_second, steps)
    capped = f", {steps} at once, each at most {share:g} messages/s" if share is not None else ""
    context.log.info(f"Campaign {campaign.id}: {len(id_ranges)} shards{capped}")
    for index, id_range in enumerate(id_ranges):
        yield dg.DynamicOutput(
            CampaignShard(campaign, id_range, share), mapping_key=f"shard_{index}"
        )


@dg.op
def send_campaign_messages(
    context: dg.OpExecutionContext,
    shard: CampaignShard,
    campaign_store: CampaignStore,
    sqs_queue: SqsQueue,
) -> SendStats:
    """Build each pending recipient's payload and queue it on SQS in batches of ten."""
    campaign = shard.campaign
    _claim_for_reexecution(context, campaign_store, campaign)
    lease = Lease(campaign_store.claims, campaign.id, context.run_id, campaign.lease_seconds)
    with as_dagster_failures(sqs_queue.queue_url, retry_transient=False):
        try:
            max_rejected = campaign_max_rejected()
            frequency_cap = cap_for_sending(
                campaign_store.organizations,
                campaign_store.marketing_sends,
                campaign.message,
                campaign_frequency_cap(),
            )
            queue = sqs_queue.batch_queue()
        except Exception:
            lease.release()
            raise
        send = ShardSend(
            campaign.message,
            lease,
            campaign_store.audience,
            queue,
            campaign_store.suppressions,
            id_range=shard.id_range,
            marketing_sends=campaign_store.marketing_sends,
            frequency_cap=frequency_cap,
            recipients_per_chunk=campaign.recipients_per_chunk,
            outcomes_per_write=campaign.outcomes_per_write,
            max_messages_per_second=shard.max_messages_per_second,
            max_rejected=max_rejected,
            # A re-execution resumes a send that began: the guard was for the first.
            preflight_max_invalid=(
                campaign.preflight_max_invalid if campaign.run_id == context.run_id else None
            ),
            on_preflight=lambda counted: _log_preflight(context, campaign.id, counted),
            on_chunk=lambda stats: context.log.info(
                f"{stats.recipients} recipients so far: {stats.queued} queued, "
                f"{stats.failed} failed"
            ),
            on_warning=context.log.warning,
        )
        try:
            stats = send.run(interrupts=INTERRUPTS)
        except INTERRUPTS:
            _, done = pause_for_termination(
                campaign_store.database, campaign.id, context.run_id, utcnow()
            )
            campaign_store.claims.finish(campaign.id, context.run_id)
            context.log.warning(f"{done}; `campaign-pipeline resume {campaign.id}` continues it")
            raise
    context.add_output_metadata(send_metadata(stats, queue.queue_url))
    if frequency_cap is not None:
        context.add_output_metadata({"frequency_cap": frequency_cap.text})
    stopped = f" (stopped: campaign {stats.stopped})" if stats.stopped else ""
    context.log.info(
        f"Campaign {campaign.id}: {stats.queued} queued, {stats.failed} failed, "
        f"{stats.batches} batches in {stats.seconds:.1f}s ({stats.messages_per_second:.0f}/s)"
        f"{stopped}"
    )
    return stats


@dg.op
def complete_campaign(
    context: dg.OpExecutionContext,
    campaign: ClaimedCampaign,
    shard_stats: list[SendStats],
    campaign_store: CampaignStore,
) -> dict[str, int]:
    """Store the campaign's final counts and release it; fail if any recipient is still pending."""
    stats = merge_stats(shard_stats)
    _claim_for_reexecution(context, campaign_store, campaign)
    with as_dagster_failures():
        counts = campaign_store.claims.finish(campaign.id, context.run_id)
    # The campaign's totals by status, then what this run did (a resume counts only its part).
    metadata: dict[str, dg.MetadataValue] = {
        status: dg.MetadataValue.int(count) for status, count in counts.items()
    }
    metadata |= {
        "queued_this_run": dg.MetadataValue.int(stats.queued),
        "failed_this_run": dg.MetadataValue.int(stats.failed),
        "failed_by_reason": reasons_table(stats),
        "failed_by_code": codes_metadata(stats),
        "resumed": dg.MetadataValue.bool(campaign.resumed),
        "this_run": dg.MetadataValue.md(
            f"{stats.queued} queued and {stats.failed} failed by {len(shard_stats)} send steps, "
            f"{stats.batches} batches, {stats.retried_entries} entries retried"
        ),
    }
    campaign_row = campaign_store.campaigns.get(campaign.id) or {}
    stopped_by = campaign_row.get("status")
    if stopped_by not in STOPPED_STATUSES:
        stopped_by = stats.stopped
    if stopped_by in STOPPED_STATUSES:
        # Stopped by an operator: the run did what it was told, which is not a failure.
        description = describe_stop(campaign_row, str(stopped_by), counts["pending"])
        metadata["stopped"] = dg.MetadataValue.text(description)
        context.instance.add_run_tags(context.run_id, {STOPPED_TAG: description})
        context.log.info(f"Campaign {campaign.id} {description}")
    elif counts["pending"]:
        raise dg.Failure(
            description=f"{counts['pending']} recipients of campaign {campaign.id} are still "
            "pending (SQS never confirmed them); a rerun will send them.",
            metadata=metadata,
        )
    context.add_output_metadata(metadata)
    return counts
