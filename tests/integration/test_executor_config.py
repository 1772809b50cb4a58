"""CAMPAIGN_EXECUTOR and the Celery settings in a fresh interpreter: the CLI's one-line error for a
bad executor, the code location under Celery (its executor and IO managers).

The code location reads CAMPAIGN_EXECUTOR when it loads, so loading it under another value
happens in a fresh interpreter; the S3 IO manager is checked against moto's server over HTTP.
The run config itself is in `tests/unit/test_executor_config.py`.
"""

import json
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest

from tests.conftest import REGION, assert_one_line_error

CAMPAIGN_ID = "123e4567-e89b-12d3-a456-426614174001"
ROOT = Path(__file__).resolve().parents[2]


def test_cli_reports_a_bad_executor_in_one_line(tmp_path: Path) -> None:
    """`trigger` loads the job, so a bad CAMPAIGN_EXECUTOR is its one-line error."""
    env = {
        "PATH": "/usr/bin:/bin",
        "CAMPAIGN_EXECUTOR": "k8s",
        "CAMPAIGN_DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}",
    }
    result = subprocess.run(
        [sys.executable, "-m", "campaign_pipeline.cli", "trigger", CAMPAIGN_ID],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert_one_line_error(result, "CAMPAIGN_EXECUTOR=k8s is not built in yet")


LOAD_UNDER_CELERY = """
import json
import dagster as dg
from campaign_pipeline.definitions import defs
dg.Definitions.validate_loadable(defs)
job = defs.get_job_def("process_campaign_messages")
print(json.dumps({
    "executor": job.executor_def.name,
    "io_manager": type(defs.resources["io_manager"]).__name__,
    "status_executor": defs.get_job_def("check_sqs_status").executor_def.name,
}))
"""


@pytest.mark.parametrize(
    ("bucket", "io_manager"), [("", "FilesystemIOManager"), ("io", "S3PickleIOManager")]
)
def test_code_location_under_celery(bucket: str, io_manager: str) -> None:
    """CAMPAIGN_EXECUTOR=celery gives the job the Celery executor and an IO manager on disk
    (or on CAMPAIGN_IO_S3_BUCKET); the quick jobs stay in process.
    """
    env = {"PATH": "/usr/bin:/bin", "CAMPAIGN_EXECUTOR": "celery", "CAMPAIGN_IO_S3_BUCKET": bucket}
    result = subprocess.run(
        [sys.executable, "-c", LOAD_UNDER_CELERY],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == {
        "executor": "celery",
        "io_manager": io_manager,
        "status_executor": "in_process",
    }


RUN_WITH_S3 = """
import json, sys
from campaign_pipeline.definitions import defs
from campaign_pipeline.defs.jobs import campaign_run_config
from campaign_pipeline.resources.campaign_store import CampaignStore
store = CampaignStore()
store.create_schema()
campaign_id = store.campaigns.add(organization_id="org", name="s3", status="asset_generated",
    message_type="text", message_content="Hi {{name}}")
store.campaigns.add_recipients(campaign_id, [{"phone_number": "+15550000001", "name": "A"}])
result = defs.get_job_def("process_campaign_messages").execute_in_process(
    run_config=campaign_run_config(campaign_id, 1), raise_on_error=False)
print(json.dumps({"success": result.success, "run_id": result.run_id}))
"""


def test_s3_io_manager_keeps_step_outputs_in_the_bucket(
    sqs_endpoint: str, make_queue: object, tmp_path: Path
) -> None:
    """With CAMPAIGN_IO_S3_BUCKET the steps' outputs are pickles in that bucket (moto's S3)."""
    s3 = boto3.client(
        "s3",
        region_name=REGION,
        endpoint_url=sqs_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    bucket = f"io-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    queue_url = make_queue(fifo=False)  # type: ignore[operator]
    env = {
        "PATH": "/usr/bin:/bin",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL_SQS": sqs_endpoint,
        "AWS_ENDPOINT_URL_S3": sqs_endpoint,
        "AWS_SQS_QUEUE_URL": queue_url,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "CAMPAIGN_IO_S3_BUCKET": bucket,
        "CAMPAIGN_DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}",
    }
    result = subprocess.run(
        [sys.executable, "-c", RUN_WITH_S3],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    run = json.loads(result.stdout.strip().splitlines()[-1])
    assert run["success"], result.stderr[-3000:]
    keys = {item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
    prefix = f"campaign-pipeline/storage/{run['run_id']}/"
    assert f"{prefix}claim_campaign/result" in keys, keys
    assert f"{prefix}complete_campaign/result" in keys, keys
