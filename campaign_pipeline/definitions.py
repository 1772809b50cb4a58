"""The code location: one job, its sensor and the resources they share."""

import dagster as dg

from campaign_pipeline.jobs import process_campaign_messages
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import SqsQueue
from campaign_pipeline.sensors import asset_generated_campaigns_sensor

defs = dg.Definitions(
    jobs=[process_campaign_messages],
    sensors=[asset_generated_campaigns_sensor],
    resources={
        # CAMPAIGN_DATABASE_URL is read when the resource starts, never shown in the UI.
        "campaign_store": CampaignStore(),
        "sqs_queue": SqsQueue(
            queue_url=dg.EnvVar("AWS_SQS_QUEUE_URL"),
            region_name=dg.EnvVar("AWS_REGION"),
        ),
    },
)
