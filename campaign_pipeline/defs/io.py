"""Where a run's steps leave their small outputs for the next step."""

import os
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3PickleIOManager, S3Resource

from campaign_pipeline.defs.executor import CAMPAIGN_EXECUTOR

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
