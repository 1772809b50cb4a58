"""The SQS status check: `probe_sqs_status`, `campaign-pipeline sqs-status`, `check_sqs_status`.

Touches moto's SQS server over HTTP (standard, FIFO and dead-letter queues), a closed loopback
port, the console script as a subprocess and the job in process. A distinctive
AWS_SECRET_ACCESS_KEY is planted in every test; it must never show.
"""

import json
import os
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from campaign_pipeline.definitions import defs
from campaign_pipeline.defs.jobs import check_sqs_status
from campaign_pipeline.defs.ops.sqs_status import SQS_QUEUE_ASSET
from campaign_pipeline.defs.schedules import sqs_status_schedule
from campaign_pipeline.resources.sqs_queue import SqsQueue
from campaign_pipeline.services.sqs_health import (
    SqsStatus,
    probe_sqs_status,
    sqs_status_from_environment,
)
from tests.conftest import REGION, free_port, run_cli

SECRET = "planted-Secret-4f9c1e-must-not-show"
ACCOUNT = "123456789012"


@pytest.fixture(autouse=True)
def planted_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """A secret key moto accepts (it checks no signatures) that no output may contain."""
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)


@pytest.fixture
def closed_endpoint() -> str:
    """A loopback port nothing listens on: connections are refused at once."""
    return f"http://127.0.0.1:{free_port()}"


def status_of(url: str, endpoint: str, **fields: Any) -> SqsStatus:
    return probe_sqs_status(
        SqsQueue(queue_url=url, region_name=REGION, endpoint_url=endpoint, **fields)
    )


def queue_arn(sqs_client: Any, url: str) -> str:
    response = sqs_client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return response["Attributes"]["QueueArn"]


def fill_standard_queue(sqs_client: Any, url: str) -> None:
    """Three visible messages, two in flight (received, not deleted), one delayed."""
    for i in range(5):
        sqs_client.send_message(QueueUrl=url, MessageBody=f"now {i}")
    sqs_client.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=600)
    received = sqs_client.receive_message(QueueUrl=url, MaxNumberOfMessages=2)
    assert len(received["Messages"]) == 2


def cli_env(**variables: str) -> dict[str, str]:
    """This test's environment (fake credentials, the planted secret) plus `variables`."""
    env = {k: v for k, v in os.environ.items() if k != "AWS_SQS_QUEUE_URL"}
    return env | variables


def assert_secret_absent(*texts: str) -> None:
    for text in texts:
        assert SECRET not in text


def test_standard_queue_reports_counts_and_settings(
    sqs_endpoint: str, make_queue: Callable[..., str], sqs_client: Any
) -> None:
    """Visible, in-flight and delayed messages are counted; the queue's own settings come back."""
    url = make_queue(
        False, VisibilityTimeout="45", MessageRetentionPeriod="86400", MaximumMessageSize="2048"
    )
    fill_standard_queue(sqs_client, url)

    status = status_of(url, sqs_endpoint)

    assert status == SqsStatus(
        configured=True,
        reachable=True,
        queue_url=url,
        region=REGION,
        endpoint_url=sqs_endpoint,
        fifo=False,
        message_group_id=None,
        visible_messages=3,
        in_flight_messages=2,
        delayed_messages=1,
        maximum_message_size_bytes=2048,
        message_retention_seconds=86400,
        visibility_timeout_seconds=45,
        dead_letter_target_arn=None,
        max_receive_count=None,
        error=None,
    )
    assert "dead-letter queue   none (no redrive policy)" in status.format_table()


def test_fifo_queue_reports_the_message_group_id_in_use(
    sqs_endpoint: str,
    make_queue: Callable[..., str],
    sqs_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A FIFO queue shows SQS_MESSAGE_GROUP_ID, the resource's own id first, else per campaign."""
    url = make_queue(True)
    for i in range(3):
        sqs_client.send_message(
            QueueUrl=url, MessageBody=f"m{i}", MessageGroupId="g", MessageDeduplicationId=f"d{i}"
        )
    sqs_client.receive_message(QueueUrl=url, MaxNumberOfMessages=1)

    per_campaign = status_of(url, sqs_endpoint)
    monkeypatch.setenv("SQS_MESSAGE_GROUP_ID", "whatsapp-messages")
    from_environment = status_of(url, sqs_endpoint)
    from_resource = status_of(url, sqs_endpoint, message_group_id="from-resource")

    assert (per_campaign.fifo, per_campaign.message_group_id) == (True, None)
    assert "message group id    - (each campaign is its own group)" in per_campaign.format_table()
    assert from_environment.message_group_id == "whatsapp-messages"
    assert from_resource.message_group_id == "from-resource"
    assert (per_campaign.visible_messages, per_campaign.in_flight_messages) == (2, 1)
    assert per_campaign.delayed_messages == 0
    assert per_campaign.reachable and per_campaign.error is None


def test_redrive_policy_names_the_dead_letter_queue(
    sqs_endpoint: str, make_queue: Callable[..., str], sqs_client: Any
) -> None:
    """A queue with a redrive policy reports the dead-letter queue's ARN and maxReceiveCount."""
    dead_letter_arn = queue_arn(sqs_client, make_queue(False))
    policy = {"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": "3"}
    url = make_queue(False, RedrivePolicy=json.dumps(policy))

    status = status_of(url, sqs_endpoint)

    assert (status.dead_letter_target_arn, status.max_receive_count) == (dead_letter_arn, 3)
    assert f"dead-letter queue   {dead_letter_arn} (after 3 receives)" in status.format_table()


def test_unreachable_endpoint_fails_fast_with_one_line(closed_endpoint: str) -> None:
    """Nothing listening: the status says so in one line within a few seconds, no attributes."""
    url = f"{closed_endpoint}/{ACCOUNT}/whatsapp-messages"
    started = time.monotonic()

    status = status_of(url, closed_endpoint)

    assert time.monotonic() - started < 5
    assert status == SqsStatus(
        configured=True,
        reachable=False,
        queue_url=url,
        region=REGION,
        endpoint_url=closed_endpoint,
        fifo=False,
        message_group_id=None,
        error=f"cannot reach {closed_endpoint}: connection refused",
    )
    assert status.format_table().splitlines()[-2:] == [
        "reachable         no",
        f"error             cannot reach {closed_endpoint}: connection refused",
    ]


def test_missing_queue_reports_the_sqs_error_code(sqs_endpoint: str) -> None:
    """SQS answers but has no such queue: its error code and message, on one line."""
    url = f"{sqs_endpoint}/{ACCOUNT}/missing-{uuid.uuid4().hex[:8]}"

    status = status_of(url, sqs_endpoint)

    assert (status.configured, status.reachable) == (True, False)
    assert status.error is not None
    assert status.error.startswith("AWS.SimpleQueueService.NonExistentQueue: ")
    assert "does not exist" in status.error
    assert "\n" not in status.error


@pytest.mark.parametrize("queue_url", [None, "", "   "])
def test_unset_queue_url_is_not_configured(
    queue_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS_SQS_QUEUE_URL unset or blank means not configured, without calling AWS."""
    if queue_url is None:
        monkeypatch.delenv("AWS_SQS_QUEUE_URL", raising=False)
    else:
        monkeypatch.setenv("AWS_SQS_QUEUE_URL", queue_url)

    status = sqs_status_from_environment()

    assert status == SqsStatus(
        configured=False,
        reachable=False,
        queue_url=None,
        region=REGION,
        endpoint_url=None,
        fifo=False,
        message_group_id=None,
        error="SQS is not configured: set AWS_SQS_QUEUE_URL",
    )


def test_unset_region_is_not_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    """A queue URL without AWS_REGION is not configured either: the job could not start."""
    monkeypatch.setenv("AWS_SQS_QUEUE_URL", f"https://sqs.us-east-1.amazonaws.com/{ACCOUNT}/q")
    monkeypatch.delenv("AWS_REGION")

    status = sqs_status_from_environment()

    assert (status.configured, status.reachable) == (False, False)
    assert status.error == "SQS is not configured: set AWS_REGION"


def test_table_and_dict_show_every_field() -> None:
    """The table is aligned and readable; the dict is JSON with every field."""
    status = SqsStatus(
        configured=True,
        reachable=True,
        queue_url=f"https://sqs.eu-west-1.amazonaws.com/{ACCOUNT}/whatsapp-messages.fifo",
        region="eu-west-1",
        endpoint_url="https://sqs.eu-west-1.amazonaws.com",
        fifo=True,
        message_group_id="whatsapp-messages",
        visible_messages=12_345,
        in_flight_messages=10,
        delayed_messages=0,
        maximum_message_size_bytes=262_144,
        message_retention_seconds=345_600,
        visibility_timeout_seconds=30,
        dead_letter_target_arn=f"arn:aws:sqs:eu-west-1:{ACCOUNT}:whatsapp-dlq.fifo",
        max_receive_count=5,
    )

    assert status.format_table() == "\n".join(
        [
            "configured          yes",
            f"queue URL           {status.queue_url}",
            "region              eu-west-1",
            "endpoint            https://sqs.eu-west-1.amazonaws.com",
            "FIFO                yes",
            "message group id    whatsapp-messages",
            "reachable           yes",
            "visible messages    12,345",
            "in-flight messages  10",
            "delayed messages    0",
            "max message size    262,144 bytes (256 KiB)",
            "retention           345,600 s (4 days)",
            "visibility timeout  30 s",
            f"dead-letter queue   {status.dead_letter_target_arn} (after 5 receives)",
        ]
    )
    assert json.loads(json.dumps(status.as_dict())) == {
        "configured": True,
        "reachable": True,
        "queue_url": status.queue_url,
        "region": "eu-west-1",
        "endpoint_url": "https://sqs.eu-west-1.amazonaws.com",
        "fifo": True,
        "message_group_id": "whatsapp-messages",
        "visible_messages": 12_345,
        "in_flight_messages": 10,
        "delayed_messages": 0,
        "maximum_message_size_bytes": 262_144,
        "message_retention_seconds": 345_600,
        "visibility_timeout_seconds": 30,
        "dead_letter_target_arn": status.dead_letter_target_arn,
        "max_receive_count": 5,
        "error": None,
    }


def test_cli_prints_a_table(
    sqs_endpoint: str, make_queue: Callable[..., str], sqs_client: Any, tmp_path: Path
) -> None:
    """`sqs-status` prints the table and exits 0 when the queue answers."""
    url = make_queue(False, VisibilityTimeout="45")
    fill_standard_queue(sqs_client, url)
    env = cli_env(AWS_SQS_QUEUE_URL=url, AWS_ENDPOINT_URL_SQS=sqs_endpoint)

    result = run_cli("sqs-status", env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        "configured          yes",
        f"queue URL           {url}",
        "region              us-east-1",
    ]
    for expected in (
        f"endpoint            {sqs_endpoint}",
        "reachable           yes",
        "visible messages    3",
        "in-flight messages  2",
        "delayed messages    1",
        "visibility timeout  45 s",
        "dead-letter queue   none (no redrive policy)",
    ):
        assert expected in lines
    assert_secret_absent(result.stdout, result.stderr)


def test_cli_json_is_the_status_as_a_dict(
    sqs_endpoint: str, make_queue: Callable[..., str], sqs_client: Any, tmp_path: Path
) -> None:
    """`sqs-status --json` prints exactly what the in-process check finds."""
    url = make_queue(True)
    env = cli_env(AWS_SQS_QUEUE_URL=url, AWS_ENDPOINT_URL_SQS=sqs_endpoint)

    result = run_cli("sqs-status", "--json", env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed == status_of(url, sqs_endpoint).as_dict()
    assert (printed["fifo"], printed["visible_messages"], printed["error"]) == (True, 0, None)
    assert_secret_absent(result.stdout, result.stderr)


def test_cli_unreachable_queue_exits_1_with_one_line(closed_endpoint: str, tmp_path: Path) -> None:
    """Nothing listening: the report on stdout, one error line on stderr, status 1, quickly."""
    url = f"{closed_endpoint}/{ACCOUNT}/whatsapp-messages"
    env = cli_env(AWS_SQS_QUEUE_URL=url, AWS_ENDPOINT_URL_SQS=closed_endpoint)
    started = time.monotonic()

    result = run_cli("sqs-status", "--json", env=env, cwd=tmp_path)

    # Mostly Python starting and importing Dagster; the check itself takes well under a second.
    assert time.monotonic() - started < 30
    reason = f"cannot reach {closed_endpoint}: connection refused"
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.splitlines() == [f"campaign-pipeline: error: {reason}"]
    printed = json.loads(result.stdout)
    assert (printed["reachable"], printed["error"], printed["visible_messages"]) == (
        False,
        reason,
        None,
    )
    assert "Traceback" not in result.stdout + result.stderr
    assert_secret_absent(result.stdout, result.stderr)


def test_cli_without_a_queue_url_exits_2(tmp_path: Path) -> None:
    """AWS_SQS_QUEUE_URL unset: the table says so, one error line, status 2."""
    result = run_cli("sqs-status", env=cli_env(), cwd=tmp_path)

    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        "campaign-pipeline: error: SQS is not configured: set AWS_SQS_QUEUE_URL"
    ]
    assert re.search(r"^configured\s+no$", result.stdout, re.MULTILINE)
    assert re.search(r"^reachable\s+no$", result.stdout, re.MULTILINE)
    assert re.search(r"^FIFO\s+-$", result.stdout, re.MULTILINE)
    assert "visible messages" not in result.stdout
    assert_secret_absent(result.stdout, result.stderr)


def output_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    [event] = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_OUTPUT]
    return dict(event.step_output_data.metadata)


def test_job_records_the_status_as_metadata(
    sqs_endpoint: str, make_queue: Callable[..., str], sqs_client: Any
) -> None:
    """check_sqs_status records the counts as ints and the whole status as JSON."""
    dead_letter_arn = queue_arn(sqs_client, make_queue(False))
    policy = {"deadLetterTargetArn": dead_letter_arn, "maxReceiveCount": 4}
    url = make_queue(False, VisibilityTimeout="45", RedrivePolicy=json.dumps(policy))
    fill_standard_queue(sqs_client, url)
    queue = SqsQueue(queue_url=url, region_name=REGION, endpoint_url=sqs_endpoint)

    result = check_sqs_status.execute_in_process(resources={"sqs_queue": queue})

    assert result.success
    metadata = output_metadata(result)
    assert metadata["visible_messages"] == dg.MetadataValue.int(3)
    assert metadata["in_flight_messages"] == dg.MetadataValue.int(2)
    assert metadata["delayed_messages"] == dg.MetadataValue.int(1)
    assert metadata["visibility_timeout_seconds"] == dg.MetadataValue.int(45)
    assert metadata["max_receive_count"] == dg.MetadataValue.int(4)
    assert metadata["dead_letter_target_arn"] == dg.MetadataValue.text(dead_letter_arn)
    assert metadata["queue_url"] == dg.MetadataValue.text(url)
    assert metadata["reachable"] == dg.MetadataValue.bool(True)
    assert metadata["status"] == dg.MetadataValue.json(status_of(url, sqs_endpoint).as_dict())
    assert result.output_for_node("record_sqs_status")["visible_messages"] == 3
    (observation,) = result.asset_observations_for_node("record_sqs_status")
    assert observation.asset_key == SQS_QUEUE_ASSET
    assert observation.metadata["visible_messages"] == dg.MetadataValue.int(3)
    assert observation.metadata["in_flight_messages"] == dg.MetadataValue.int(2)
    assert_secret_absent(repr(result.all_events))


def test_job_fails_with_the_reason_when_the_queue_does_not_answer(closed_endpoint: str) -> None:
    """An unreachable queue fails the run with the one-line reason, and records what it knows."""
    url = f"{closed_endpoint}/{ACCOUNT}/whatsapp-messages"
    queue = SqsQueue(queue_url=url, region_name=REGION, endpoint_url=closed_endpoint)

    result = check_sqs_status.execute_in_process(
        resources={"sqs_queue": queue}, raise_on_error=False
    )

    assert not result.success
    [failure] = result.get_step_failure_events()
    user_failure = failure.step_failure_data.user_failure_data
    assert user_failure is not None
    reason = f"cannot reach {closed_endpoint}: connection refused"
    assert user_failure.description == reason
    assert user_failure.metadata["error"] == dg.MetadataValue.text(reason)
    assert user_failure.metadata["reachable"] == dg.MetadataValue.bool(False)
    assert user_failure.metadata["queue_url"] == dg.MetadataValue.text(url)
    assert "visible_messages" not in user_failure.metadata
    assert_secret_absent(repr(result.all_events))


def test_code_location_job_reads_the_queue_from_the_environment(
    sqs_endpoint: str,
    make_queue: Callable[..., str],
    sqs_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The job as the code location defines it finds the queue through its EnvVars."""
    url = make_queue(True)
    sqs_client.send_message(
        QueueUrl=url, MessageBody="m", MessageGroupId="g", MessageDeduplicationId="d"
    )
    monkeypatch.setenv("AWS_SQS_QUEUE_URL", url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", sqs_endpoint)

    result = defs.get_job_def("check_sqs_status").execute_in_process()

    assert result.success
    metadata = output_metadata(result)
    assert metadata["visible_messages"] == dg.MetadataValue.int(1)
    assert metadata["fifo"] == dg.MetadataValue.bool(True)
    assert metadata["endpoint_url"] == dg.MetadataValue.text(sqs_endpoint)
    assert_secret_absent(repr(result.all_events))


def test_code_location_job_fails_when_the_queue_url_is_blank(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """AWS_SQS_QUEUE_URL set but empty: the run fails as not configured."""
    monkeypatch.setenv("AWS_SQS_QUEUE_URL", "")

    result = defs.get_job_def("check_sqs_status").execute_in_process(raise_on_error=False)

    assert not result.success
    [failure] = result.get_step_failure_events()
    user_failure = failure.step_failure_data.user_failure_data
    assert user_failure is not None
    assert user_failure.description == "SQS is not configured: set AWS_SQS_QUEUE_URL"
    assert user_failure.metadata["configured"] == dg.MetadataValue.bool(False)


def test_schedule_checks_every_five_minutes_once_turned_on() -> None:
    """The schedule targets check_sqs_status, is in the code location, and starts stopped."""
    assert sqs_status_schedule.job_name == "check_sqs_status"
    assert sqs_status_schedule.cron_schedule == "*/5 * * * *"
    assert sqs_status_schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert [s.name for s in defs.schedules or []] == ["sqs_status_schedule"]
