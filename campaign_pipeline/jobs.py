"""The job that processes one campaign, and the run config and tags every launcher gives it."""

import dagster as dg

from campaign_pipeline.ops import (
    CampaignConfig,
    claim_campaign,
    complete_campaign,
    send_campaign_messages,
)


@dg.job(
    description="Turn one generated campaign into WhatsApp messages on SQS.",
    # Three steps in a line gain nothing from a process each; in-process saves ~2.5 s a step.
    executor_def=dg.in_process_executor,
    tags={"pipeline": "campaign_messages"},
)
def process_campaign_messages() -> None:
    """Claim the campaign, queue its messages, record the outcome."""
    campaign = claim_campaign()
    stats = send_campaign_messages(campaign)
    complete_campaign(campaign, stats)


def campaign_run_config(campaign_id: str) -> dg.RunConfig:
    """Run config for processing `campaign_id`: the first op's config, nothing else."""
    return dg.RunConfig(ops={"claim_campaign": CampaignConfig(campaign_id=campaign_id)})


def campaign_tags(campaign_id: str, organization_id: str | None) -> dict[str, str]:
    """Tags that find a campaign's runs in the UI (and limit them to one at a time)."""
    tags = {"campaign_id": campaign_id}
    if organization_id:
        tags["organization_id"] = organization_id
    return tags
