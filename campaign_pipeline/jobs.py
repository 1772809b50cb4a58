"""The job that processes one campaign, and the run config and tags every launcher gives it."""

from typing import Any

import dagster as dg

from campaign_pipeline.ops import (
    CampaignConfig,
    claim_campaign,
    complete_campaign,
    plan_shards,
    send_campaign_messages,
)


@dg.job(
    description="Turn one generated campaign into WhatsApp messages on SQS.",
    # In-process or multiprocess, chosen per run in its config (see `campaign_run_config`).
    executor_def=dg.multi_or_in_process_executor,
    tags={"pipeline": "campaign_messages"},
)
def process_campaign_messages() -> None:
    """Claim the campaign, queue its messages shard by shard, record the outcome."""
    campaign = claim_campaign()
    shard_stats = plan_shards(campaign).map(send_campaign_messages)
    complete_campaign(campaign, shard_stats.collect())


def campaign_run_config(
    campaign_id: str, processes: int = 1, **campaign_config: Any
) -> dict[str, Any]:
    """Run config for processing `campaign_id` with `processes` send steps at once.

    One process runs every step in the run's own process (a step costs milliseconds); more
    run shards in parallel under the multiprocess executor (a step then costs ~2.5 s to start).
    """
    config = CampaignConfig(campaign_id=campaign_id, **campaign_config)
    execution = (
        {"in_process": {}} if processes == 1 else {"multiprocess": {"max_concurrent": processes}}
    )
    return {
        "ops": {"claim_campaign": {"config": config.model_dump(exclude_unset=True)}},
        "execution": {"config": execution},
    }


def campaign_tags(campaign_id: str, organization_id: str | None) -> dict[str, str]:
    """Tags that find a campaign's runs in the UI (and limit them to one at a time)."""
    tags = {"campaign_id": campaign_id}
    if organization_id:
        tags["organization_id"] = organization_id
    return tags
