"""The code location: three jobs, their sensors, a schedule and the resources they share."""

import dagster as dg

from campaign_pipeline.defs.io import step_io_manager
from campaign_pipeline.defs.jobs import (
    check_sqs_status,
    preview_campaign,
    process_campaign_messages,
)
from campaign_pipeline.defs.ops.sqs_status import SQS_QUEUE_ASSET
from campaign_pipeline.defs.schedules import sqs_status_schedule
from campaign_pipeline.defs.sensors import (
    asset_generated_campaigns_sensor,
    pause_campaign_of_terminated_run,
    record_campaign_run_failure,
    resume_stalled_campaigns_sensor,
)
from campaign_pipeline.defs.tags import JOB_NAME
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import SqsQueue

defs = dg.Definitions(
    jobs=[process_campaign_messages, check_sqs_status, preview_campaign],
    sensors=[
        asset_generated_campaigns_sensor,
        record_campaign_run_failure,
        pause_campaign_of_terminated_run,
        resume_stalled_campaigns_sensor,
    ],
    schedules=[sqs_status_schedule],
    assets=[
        dg.AssetSpec(
            SQS_QUEUE_ASSET,
            description="The SQS queue the WhatsApp sender reads; check_sqs_status observes it.",
        )
    ],
    resources={
        # CAMPAIGN_DATABASE_URL is read when the resource starts, never shown in the UI.
        "campaign_store": CampaignStore(),
        "sqs_queue": SqsQueue(
            queue_url=dg.EnvVar("AWS_SQS_QUEUE_URL"),
            region_name=dg.EnvVar("AWS_REGION"),
        ),
        **step_io_manager(),
    },
)


def campaign_job() -> dg.JobDefinition:
    """process_campaign_messages with its resources, for `dg.build_reconstructable_job`."""
    return defs.get_job_def(JOB_NAME)
