"""The campaign job with the run config and tags every launcher gives it; the SQS check."""

from typing import Any

import dagster as dg

from campaign_pipeline.defs.executor import CAMPAIGN_EXECUTOR, execution_config, executor_for
from campaign_pipeline.defs.ops import (
    CampaignConfig,
    claim_campaign,
    complete_campaign,
    plan_shards,
    send_campaign_messages,
)
from campaign_pipeline.defs.ops.preview import preview_campaign_payloads
from campaign_pipeline.defs.ops.sqs_status import record_sqs_status
from campaign_pipeline.defs.partitions import campaign_partitions
from campaign_pipeline.defs.tags import (
    CAMPAIGN_ID_TAG,
)
from campaign_pipeline.settings import campaign_send_processes


def _run_config_for_partition(campaign_id: str) -> dict[str, Any]:
    return campaign_run_config(campaign_id, campaign_send_processes())


def _tags_for_partition(campaign_id: str) -> dict[str, str]:
    return {CAMPAIGN_ID_TAG: campaign_id}


@dg.job(
    description="Turn one generated campaign into WhatsApp messages on SQS.",
    # A run of a partition (a backfill, the launchpad) gets the config and the campaign_id tag
    # (one run per campaign at a time) every other launcher gives it.
    config=dg.PartitionedConfig(
        partitions_def=campaign_partitions,
        run_config_for_partition_key_fn=_run_config_for_partition,
        tags_for_partition_key_fn=_tags_for_partition,
    ),
    executor_def=executor_for(CAMPAIGN_EXECUTOR),
    # A run retried by the daemon (a crashed run) starts over from the claim, never from the
    # failed step: only a run that holds the campaign's lease may send.
    tags={"pipeline": "campaign_messages", "dagster/retry_strategy": "ALL_STEPS"},
)
def process_campaign_messages() -> None:
    """Claim the campaign, queue its messages shard by shard, record the outcome."""
    campaign = claim_campaign()
    shard_stats = plan_shards(campaign).map(send_campaign_messages)
    complete_campaign(campaign, shard_stats.collect())


def campaign_run_config(
    campaign_id: str,
    processes: int = 1,
    *,
    executor: str | None = CAMPAIGN_EXECUTOR,
    **campaign_config: Any,
) -> dict[str, Any]:
    """Run config for processing `campaign_id` with `processes` send steps at once.

    `executor` is CAMPAIGN_EXECUTOR's value, the loaded one by default (see
    `executor.execution_config`).
    """
    config = CampaignConfig(campaign_id=campaign_id, **campaign_config)
    return {
        "ops": {"claim_campaign": {"config": config.model_dump(exclude_unset=True)}},
        "execution": {"config": execution_config(executor, processes)},
    }


@dg.job(
    description="Record whether the SQS queue answers, and how many messages it holds.",
    # One quick step: starting a process for it would cost more than the check itself.
    executor_def=dg.in_process_executor,
    tags={"pipeline": "sqs_status"},
)
def check_sqs_status() -> None:
    """Ask SQS for the queue's attributes and record them as the run's metadata."""
    record_sqs_status()


@dg.job(
    description="Preview a campaign: build its pending recipients' payloads as a run would, "
    "count them, show a sample; nothing is written or sent.",
    executor_def=dg.in_process_executor,
    tags={"pipeline": "campaign_preview"},
)
def preview_campaign() -> None:
    """Build every pending recipient's payload and record the counts and a sample as metadata."""
    preview_campaign_payloads()
