"""The campaign job with the run config and tags every launcher gives it; the SQS check."""

from typing import Any

import dagster as dg

from campaign_pipeline.defs.ops import (
    CampaignConfig,
    claim_campaign,
    complete_campaign,
    plan_shards,
    send_campaign_messages,
)
from campaign_pipeline.defs.ops.preview import preview_campaign_payloads
from campaign_pipeline.defs.ops.sqs_status import record_sqs_status
from campaign_pipeline.defs.tags import (
    CAMPAIGN_ID_TAG,
    CAMPAIGN_PARTITIONS,
)
from campaign_pipeline.errors import SettingsError
from campaign_pipeline.settings import campaign_executor, campaign_send_processes

# Imported once by the multiprocess executor's fork server, so a step process starts warm.
FORKSERVER_PRELOAD = "campaign_pipeline.definitions"

# Read when the code location loads: the job's executor is part of its definition, and the
# run config every launcher writes must match it (so trigger needs the same environment).
CAMPAIGN_EXECUTOR = campaign_executor()


def executor_for(executor: str | None) -> dg.ExecutorDefinition:
    """The job's executor for a CAMPAIGN_EXECUTOR value.

    Raises:
        SettingsError: celery without dagster-celery installed.
    """
    if executor != "celery":
        # In-process or multiprocess, chosen per run in its config (see `campaign_run_config`).
        return dg.multi_or_in_process_executor
    try:
        from campaign_pipeline.defs.celery_executor import campaign_celery_executor
    except ImportError:
        raise SettingsError(
            "CAMPAIGN_EXECUTOR=celery needs dagster-celery: pip install 'campaign-pipeline[celery]'"
        ) from None
    return campaign_celery_executor


# One partition per campaign (its id), added by whoever launches its first run: Jobs ->
# process_campaign_messages -> Partitions then lists campaigns with their latest run.
campaign_partitions = dg.DynamicPartitionsDefinition(name=CAMPAIGN_PARTITIONS)


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

    `executor` is CAMPAIGN_EXECUTOR's value, the loaded one by default. Unset, one process runs
    every step in the run's own process (a step costs milliseconds) and more run shards in
    parallel under the multiprocess executor. Its steps fork from a server that has imported
    the code location once: spawning each step afresh made a five-step run of 2,000 recipients
    take 6.9 s instead of 3.9 s on a 2-core machine. `in_process` runs one step at a time
    whatever `processes` says; `celery` submits at most `processes` steps to the workers at
    once, its broker and backend read from the environment, never written here.
    """
    config = CampaignConfig(campaign_id=campaign_id, **campaign_config)
    execution: dict[str, Any]
    if executor == "celery":
        execution = {"max_concurrent": processes}
    elif executor == "in_process" or (executor is None and processes == 1):
        execution = {"in_process": {}}
    else:
        execution = {
            "multiprocess": {
                "max_concurrent": processes,
                "start_method": {"forkserver": {"preload_modules": [FORKSERVER_PRELOAD]}},
            }
        }
    return {
        "ops": {"claim_campaign": {"config": config.model_dump(exclude_unset=True)}},
        "execution": {"config": execution},
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
