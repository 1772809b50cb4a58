"""The sensor that starts a run for every campaign reaching `asset_generated`."""

import dagster as dg

from campaign_pipeline.jobs import campaign_run_config, campaign_tags, process_campaign_messages
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.settings import (
    campaign_batch_size,
    campaign_processing_interval_seconds,
    campaign_send_processes,
)


@dg.sensor(
    job=process_campaign_messages,
    # A sensor's interval is part of its definition, so it is read when the code location loads.
    minimum_interval_seconds=campaign_processing_interval_seconds(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Start process_campaign_messages for campaigns in asset_generated, oldest first.",
)
def asset_generated_campaigns_sensor(
    context: dg.SensorEvaluationContext, campaign_store: CampaignStore
) -> dg.SensorResult | dg.SkipReason:
    """One run request per waiting campaign, at most CAMPAIGN_BATCH_SIZE per tick."""
    limit = campaign_batch_size()
    processes = campaign_send_processes()
    waiting = campaign_store.campaigns_to_process(limit)
    if not waiting:
        return dg.SkipReason("No campaign is in asset_generated.")
    context.log.info(f"{len(waiting)} campaigns in asset_generated (at most {limit} per tick)")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                # The version changes whenever this pipeline changes the campaign's status, so a
                # campaign set back to asset_generated after processing is processed again.
                run_key=f"{campaign.id}:v{campaign.version}",
                run_config=campaign_run_config(campaign.id, processes),
                tags=campaign_tags(campaign.id, campaign.organization_id),
            )
            for campaign in waiting
        ]
    )
