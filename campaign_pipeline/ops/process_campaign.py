"""Ops that claim a campaign, queue its messages on SQS and record the result."""

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import dagster as dg
import sqlalchemy as sa
from pydantic import Field

from campaign_pipeline.dispatch import (
    SendInterrupted,
    SendStats,
    merge_stats,
    queue_campaign_messages,
)
from campaign_pipeline.payloads import (
    CampaignDefinitionError,
    CampaignMessage,
    check_campaign_message,
)
from campaign_pipeline.resources.campaign_store import (
    CampaignStore,
    CampaignStoreError,
    IdRange,
)
from campaign_pipeline.resources.sqs_queue import SqsQueue

# A dropped database connection is worth another try; anything else about the database is not.
TRANSIENT_DATABASE_ERRORS = (sa.exc.OperationalError, sa.exc.InterfaceError)


class CampaignConfig(dg.Config):
    """Which campaign to process, and how much of it to hold in memory at once."""

    campaign_id: str = Field(description="UUID of the campaign to process.")
    recipients_per_chunk: int = Field(
        default=50_000, ge=1, description="Pending recipients read and built at a time."
    )
    outcomes_per_write: int = Field(
        default=1_000,
        ge=1,
        description="Outcomes written per database update; a crash loses at most this many.",
    )
    lease_seconds: float = Field(
        default=300.0,
        gt=0,
        description="How long the run's claim on the campaign outlives its last write; "
        "a crashed run's campaign can be resumed after this.",
    )
    recipients_per_shard: int = Field(
        default=250_000,
        ge=1,
        description="Pending recipients per send step. Steps run in parallel under the "
        "multiprocess (or a distributed) executor; keep shards coarse, each step costs seconds.",
    )


@dataclass(frozen=True)
class ClaimedCampaign:
    """A campaign this run holds, with the settings the later ops need."""

    message: CampaignMessage
    resumed: bool
    recipients_per_chunk: int
    outcomes_per_write: int
    lease_seconds: float
    recipients_per_shard: int

    @property
    def id(self) -> str:
        """The campaign's id."""
        return self.message.campaign_id


@dataclass(frozen=True)
class CampaignShard:
    """The pending recipients of a claimed campaign that one send step handles."""

    campaign: ClaimedCampaign
    id_range: IdRange


def _send_metadata(stats: SendStats, queue_url: str) -> dict[str, dg.MetadataValue]:
    reasons = "\n".join(
        f"| {reason.replace('|', '/')} | {count} |"
        for reason, count in stats.failed_by_reason.most_common(20)
    )
    return {
        "recipients": dg.MetadataValue.int(stats.recipients),
        "queued": dg.MetadataValue.int(stats.queued),
        "failed": dg.MetadataValue.int(stats.failed),
        "failed_by_reason": dg.MetadataValue.md(
            f"| reason | recipients |\n|---|---|\n{reasons}" if reasons else "none"
        ),
        "batches": dg.MetadataValue.int(stats.batches),
        "retried_entries": dg.MetadataValue.int(stats.retried_entries),
        "duration_s": dg.MetadataValue.float(round(stats.seconds, 3)),
        "messages_per_s": dg.MetadataValue.float(round(stats.messages_per_second, 1)),
        "queue": dg.MetadataValue.url(queue_url),
    }


@dg.op
def claim_campaign(
    context: dg.OpExecutionContext, config: CampaignConfig, campaign_store: CampaignStore
) -> ClaimedCampaign:
    """Move the campaign from asset_generated to ready_to_launch (or resume it) for this run."""
    try:
        campaign_id = str(uuid.UUID(config.campaign_id))
    except ValueError:
        raise dg.Failure(
            description=f"campaign id {config.campaign_id!r} is not a UUID", allow_retries=False
        ) from None
    try:
        claim = campaign_store.claim(campaign_id, context.run_id, config.lease_seconds)
        check_campaign_message(claim.message)
    except CampaignDefinitionError as error:
        campaign_store.fail_campaign(campaign_id, str(error))
        raise dg.Failure(
            description=f"campaign {campaign_id} cannot be sent: {error}", allow_retries=False
        ) from None
    except CampaignStoreError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None
    except TRANSIENT_DATABASE_ERRORS as error:
        raise dg.RetryRequested(max_retries=3, seconds_to_wait=2) from error
    pending = campaign_store.count_recipients(campaign_id)["pending"]
    context.add_output_metadata(
        {
            "campaign_id": campaign_id,
            "campaign_name": claim.name,
            "message_type": claim.message.message_type,
            "resumed": claim.resumed,
            "pending_recipients": pending,
        }
    )
    context.log.info(
        f"{'Resumed' if claim.resumed else 'Claimed'} campaign {campaign_id} "
        f"({claim.message.message_type}) with {pending} pending recipients"
    )
    return ClaimedCampaign(
        message=claim.message,
        resumed=claim.resumed,
        recipients_per_chunk=config.recipients_per_chunk,
        outcomes_per_write=config.outcomes_per_write,
        lease_seconds=config.lease_seconds,
        recipients_per_shard=config.recipients_per_shard,
    )


@dg.op(out=dg.DynamicOut(CampaignShard))
def plan_shards(
    context: dg.OpExecutionContext, campaign: ClaimedCampaign, campaign_store: CampaignStore
) -> Iterator[dg.DynamicOutput[CampaignShard]]:
    """Split the pending recipients into id ranges, one send step each."""
    try:
        id_ranges = campaign_store.id_ranges(campaign.id, campaign.recipients_per_shard)
    except TRANSIENT_DATABASE_ERRORS as error:
        raise dg.RetryRequested(max_retries=3, seconds_to_wait=2) from error
    context.log.info(f"Campaign {campaign.id}: {len(id_ranges)} shards")
    for index, id_range in enumerate(id_ranges):
        yield dg.DynamicOutput(CampaignShard(campaign, id_range), mapping_key=f"shard_{index}")


@dg.op
def send_campaign_messages(
    context: dg.OpExecutionContext,
    shard: CampaignShard,
    campaign_store: CampaignStore,
    sqs_queue: SqsQueue,
) -> SendStats:
    """Build each pending recipient's payload and queue it on SQS in batches of ten."""
    campaign = shard.campaign

    def log_progress(stats: SendStats) -> None:
        context.log.info(
            f"{stats.recipients} recipients so far: {stats.queued} queued, {stats.failed} failed"
        )

    try:
        stats = queue_campaign_messages(
            campaign.message,
            campaign_store,
            sqs_queue,
            context.run_id,
            recipients_per_chunk=campaign.recipients_per_chunk,
            outcomes_per_write=campaign.outcomes_per_write,
            lease_seconds=campaign.lease_seconds,
            id_range=shard.id_range,
            on_chunk=log_progress,
        )
    except SendInterrupted as error:
        campaign_store.release(campaign.id, context.run_id)
        raise dg.Failure(
            description=f"{error}. Recipients without an outcome stay pending for a rerun.",
            metadata=_send_metadata(error.stats, sqs_queue.queue_url),
        ) from None
    except Exception:
        campaign_store.release(campaign.id, context.run_id)
        raise
    context.add_output_metadata(_send_metadata(stats, sqs_queue.queue_url))
    context.log.info(
        f"Campaign {campaign.id}: {stats.queued} queued, {stats.failed} failed, "
        f"{stats.batches} batches in {stats.seconds:.1f}s ({stats.messages_per_second:.0f}/s)"
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
    try:
        counts = campaign_store.finish(campaign.id, context.run_id)
    except TRANSIENT_DATABASE_ERRORS as error:
        raise dg.RetryRequested(max_retries=3, seconds_to_wait=2) from error
    metadata: dict[str, dg.MetadataValue] = {
        status: dg.MetadataValue.int(count) for status, count in counts.items()
    }
    metadata["this_run"] = dg.MetadataValue.md(
        f"{stats.queued} queued and {stats.failed} failed by {len(shard_stats)} send steps, "
        f"{stats.batches} batches, {stats.retried_entries} entries retried"
    )
    if counts["pending"]:
        raise dg.Failure(
            description=f"{counts['pending']} recipients of campaign {campaign.id} are still "
            "pending (SQS never confirmed them); a rerun will send them.",
            metadata=metadata,
        )
    context.add_output_metadata(metadata)
    return counts
