"""The code location: three jobs, their sensors, a schedule and the resources they share."""

import os
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3PickleIOManager, S3Resource

from campaign_pipeline.defs.jobs import (
    CAMPAIGN_EXECUTOR,
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

IO_BUCKET_VARIABLE = "CAMPAIGN_IO_S3_BUCKET"


def step_io_manager() -> dict[str, Any]:
    """Where a run's steps leave their small outputs (claim, shard, stats) for the next step.

    Under Celery a step's next one may run on another worker: with CAMPAIGN_IO_S3_BUCKET set
    (read when the code location loads), a bucket every machine reaches; else the files under
    `$DAGSTER_HOME/storage`, which every worker of one machine reaches. The local executors
    keep Dagster's default (the same files).
    """
    if os.environ.get(IO_BUCKET_VARIABLE, "").strip():
        return {
            "io_manager": S3PickleIOManager(
                s3_resource=S3Resource(region_name=dg.EnvVar("AWS_REGION")),
                s3_bucket=dg.EnvVar(IO_BUCKET_VARIABLE),
                s3_prefix="campaign-pipeline",
            )
        }
    if CAMPAIGN_EXECUTOR == "celery":
        return {"io_manager": dg.FilesystemIOManager()}
    return {}


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
