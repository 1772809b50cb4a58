"""`campaign-pipeline trigger`: a campaign's run started through the webserver's GraphQL API.

The first tests run the real `dagster-webserver` and `dagster-daemon` on the production instance
config (PostgreSQL, queued run coordinator) with fauxqs as SQS; the error tests need neither
process and use a SQLite campaign store.
"""

import os
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from campaign_pipeline.resources.campaign_store import CampaignStore
from tests.conftest import assert_one_line_error, free_port
from tests.e2e.conftest import (
    BIN,
    ORGANIZATION_ID,
    ROOT,
    RUN_START_SECONDS,
    DagsterProcesses,
    add_campaign,
    assert_every_recipient_accounted_for,
    campaign_runs,
    graphql,
    run_cli,
    sent_audience_ids,
    stop_sensor,
    wait_until,
)

pytestmark = pytest.mark.timeout(150)


def test_trigger_wait_runs_the_campaign_once_and_refuses_a_second_trigger(
    dagster_processes: DagsterProcesses,
    dagster_instance_env: dict[str, str],
    campaign_store: CampaignStore,
    sqs_client: object,
    tmp_path: Path,
) -> None:
    """`trigger --wait` launches through GraphQL and follows the run to success; a second
    trigger while the first run is in progress is refused; every message is queued once.

    The daemon starts only after the second trigger, so the first run is reliably still in
    the queue (in progress) when the second asks; the sensor is stopped so that only the
    triggers launch runs.
    """
    webserver = dagster_processes.webserver()
    assert webserver.url
    stop_sensor(webserver.url)
    campaign_id = add_campaign(campaign_store, valid=50, invalid=2)
    env = dagster_instance_env
    stdout, stderr = tmp_path / "first.out", tmp_path / "first.err"
    with stdout.open("w") as out, stderr.open("w") as err:
        first = subprocess.Popen(
            [
                *(str(BIN / "campaign-pipeline"), "trigger", campaign_id, "--wait"),
                *("--dagster-url", webserver.url, "--header", "X-Forwarded-User: e2e"),
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=err,
        )
    try:
        launched = wait_until(
            lambda: re.search(r"^launched run (\S+) ", stdout.read_text(), re.MULTILINE),
            60,
            "the first trigger to launch its run",
            processes=[webserver],
        )
        run_id = launched.group(1)

        second = run_cli("trigger", campaign_id, "--dagster-url", webserver.url, env=env)

        assert_one_line_error(
            second, f"campaign {campaign_id} already has a run in progress: {run_id} (QUEUED)"
        )
        daemon = dagster_processes.daemon()
        wait_until(
            lambda: first.poll() is not None,
            RUN_START_SECONDS + 15,
            "the first trigger to follow its run to the end",
            processes=[webserver, daemon],
        )
    finally:
        if first.poll() is None:
            first.kill()
        first.wait()

    output = stdout.read_text() + stderr.read_text()
    assert first.returncode == 0, output
    assert stdout.read_text().splitlines() == [
        f"launched run {run_id} to process campaign {campaign_id}: {webserver.url}/runs/{run_id}",
        f"run {run_id} succeeded; the campaign {campaign_id}: 50 queued, 2 failed, 0 pending",
    ]
    assert stderr.read_text() == ""
    runs = campaign_runs(webserver.url, campaign_id)
    assert [(run["runId"], run["status"]) for run in runs] == [(run_id, "SUCCESS")]
    tags = graphql(
        webserver.url,
        "query($id: ID!) { runOrError(runId: $id) { ... on Run { tags { key value } } } }",
        {"id": run_id},
    )["runOrError"]["tags"]
    assert {"key": "campaign_id", "value": campaign_id} in tags
    assert {"key": "organization_id", "value": ORGANIZATION_ID} in tags
    sent, message_ids = sent_audience_ids(sqs_client, env["AWS_SQS_QUEUE_URL"])
    assert sum(sent.values()) == 50
    assert_every_recipient_accounted_for(campaign_store, campaign_id, sent, message_ids)


def test_trigger_wait_reports_a_failed_run_on_one_line(
    dagster_processes: DagsterProcesses,
    dagster_instance_env: dict[str, str],
    campaign_store: CampaignStore,
) -> None:
    """A run that fails (a campaign of an unknown message type) exits 1 with its step's reason."""
    webserver = dagster_processes.webserver()
    assert webserver.url
    stop_sensor(webserver.url)
    dagster_processes.daemon()
    campaign_id = campaign_store.campaigns.add(
        organization_id=ORGANIZATION_ID, name="fax", status="asset_generated", message_type="fax"
    )

    result = run_cli(
        "trigger",
        campaign_id,
        "--wait",
        "--dagster-url",
        webserver.url,
        env=dagster_instance_env,
        timeout=RUN_START_SECONDS + 30,
    )

    line = assert_one_line_error(
        result, "failed: step claim_campaign: ", "'fax'", f"campaign {campaign_id}", status=1
    )
    assert re.match(r"campaign-pipeline: run \S+ failed: ", line), line
    assert result.stdout.startswith("launched run ")
    assert campaign_store.campaigns.get(campaign_id)["status"] == "failed"


@pytest.fixture
def sqlite_env(tmp_path: Path, sqlite_store: CampaignStore) -> dict[str, str]:
    """Environment for the CLI with a SQLite campaign store and a webserver URL nobody serves."""
    env = {k: v for k, v in os.environ.items() if k not in {"DAGSTER_URL", "PYTEST_CURRENT_TEST"}}
    env["CAMPAIGN_DATABASE_URL"] = str(sqlite_store.database_url)
    env["DAGSTER_URL"] = f"http://127.0.0.1:{free_port()}"
    return env


def test_trigger_reports_an_unreachable_webserver(
    sqlite_env: dict[str, str], sqlite_store: CampaignStore
) -> None:
    """A processable campaign but no webserver at the URL: one line naming the URL."""
    campaign_id = add_campaign(sqlite_store, valid=1)
    result = run_cli("trigger", campaign_id, env=sqlite_env)
    assert_one_line_error(
        result, f"cannot reach the Dagster webserver at {sqlite_env['DAGSTER_URL']}"
    )


def test_trigger_reports_an_unknown_campaign(sqlite_env: dict[str, str]) -> None:
    """A UUID with no campaign is refused before the webserver is asked."""
    campaign_id = str(uuid.uuid4())
    result = run_cli("trigger", campaign_id, env=sqlite_env)
    assert_one_line_error(result, f"campaign {campaign_id} does not exist")


@pytest.mark.parametrize(
    ("status", "pending", "expected"),
    [
        ("draft", 1, "is 'draft'; only 'asset_generated' campaigns"),
        ("failed", 1, "is 'failed'; only 'asset_generated' campaigns"),
        ("ready_to_launch", 0, "is 'ready_to_launch' with no pending recipients"),
    ],
)
def test_trigger_refuses_a_campaign_that_cannot_be_processed(
    sqlite_env: dict[str, str],
    sqlite_store: CampaignStore,
    status: str,
    pending: int,
    expected: str,
) -> None:
    """Only asset_generated campaigns, or ready_to_launch ones with pending recipients, run."""
    campaign_id = add_campaign(sqlite_store, valid=pending, status=status)
    result = run_cli("trigger", campaign_id, env=sqlite_env)
    assert_one_line_error(result, f"campaign {campaign_id} {expected}")


def test_trigger_rejects_a_malformed_campaign_id(sqlite_env: dict[str, str]) -> None:
    """An id that is not a UUID is refused before anything else."""
    result = run_cli("trigger", "campaign-42", env=sqlite_env)
    assert_one_line_error(result, "campaign id 'campaign-42' is not a UUID")
