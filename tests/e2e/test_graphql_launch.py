"""The documented raw `launchRun` mutation, posted as documented, against the real processes.

Reads the JSON of the curl example in `docs/operations.md`, so the documentation is what is
tested. Touches the real `dagster-webserver` and `dagster-daemon` on `deploy/dagster.yaml`
(PostgreSQL, queued run coordinator with one run per campaign), a PostgreSQL campaign store and
fauxqs as SQS.
"""

import json
import re
from typing import Any

import pytest

from campaign_pipeline.defs.jobs import campaign_run_config
from campaign_pipeline.defs.tags import campaign_tags
from campaign_pipeline.resources.campaign_store import CampaignStore
from tests.e2e.conftest import (
    ORGANIZATION_ID,
    ROOT,
    RUN_START_SECONDS,
    DagsterProcesses,
    add_campaign,
    assert_every_recipient_accounted_for,
    campaign_runs,
    graphql,
    sent_audience_ids,
    stop_sensor,
    wait_until,
)

pytestmark = pytest.mark.timeout(150)

README_CAMPAIGN_ID = "123e4567-e89b-12d3-a456-426614174001"


def readme_launch_request() -> tuple[str, dict[str, Any]]:
    """The URL and JSON body of the curl `launchRun` example in docs/operations.md."""
    operations = (ROOT / "docs" / "operations.md").read_text()
    blocks = re.findall(r"```bash\n(curl .*?)\n```", operations, re.DOTALL)
    (block,) = [block for block in blocks if "launchRun" in block]
    url = re.match(r"curl -sS (\S+)", block)
    body = re.search(r"<<'EOF'\n(.*)\nEOF", block, re.DOTALL)
    assert url and body, block
    return url.group(1), json.loads(body.group(1))


def test_readme_launch_run_json_matches_what_the_sensor_launches() -> None:
    """The documented run config and tags are the ones the sensor and `trigger` use."""
    url, body = readme_launch_request()
    params = body["variables"]["executionParams"]

    assert url == "http://127.0.0.1:3000/graphql"
    assert params["selector"] == {
        "repositoryLocationName": "campaign_pipeline",
        "repositoryName": "__repository__",
        "jobName": "process_campaign_messages",
    }
    assert params["runConfigData"] == campaign_run_config(README_CAMPAIGN_ID, 1)
    tags = {tag["key"]: tag["value"] for tag in params["executionMetadata"]["tags"]}
    assert tags == campaign_tags(README_CAMPAIGN_ID, ORGANIZATION_ID)


def test_readme_launch_run_queues_runs_that_the_daemon_runs_one_at_a_time(
    dagster_processes: DagsterProcesses,
    dagster_instance_env: dict[str, str],
    campaign_store: CampaignStore,
    sqs_client: object,
) -> None:
    """The documented mutation, posted twice for one campaign, queues two runs; the daemon runs
    them one after the other (one run per campaign_id), and every message is sent once.
    """
    webserver = dagster_processes.webserver()
    assert webserver.url
    stop_sensor(webserver.url)
    campaign_id = add_campaign(campaign_store, valid=30, invalid=1)
    _, body = readme_launch_request()
    request = json.loads(json.dumps(body).replace(README_CAMPAIGN_ID, campaign_id))

    launched = [
        graphql(webserver.url, request["query"], request["variables"])["launchRun"]
        for _ in range(2)
    ]

    assert [launch["__typename"] for launch in launched] == ["LaunchRunSuccess"] * 2, launched
    assert [launch["run"]["status"] for launch in launched] == ["QUEUED"] * 2
    daemon = dagster_processes.daemon()
    runs = wait_until(
        lambda: (
            (runs := campaign_runs(webserver.url or "", campaign_id))
            and all(run["status"] in ("SUCCESS", "FAILURE", "CANCELED") for run in runs)
            and runs
        ),
        2 * RUN_START_SECONDS,
        "both runs to finish",
        processes=[webserver, daemon],
        interval=1,
    )
    assert {run["runId"] for run in runs} == {launch["run"]["runId"] for launch in launched}
    assert [run["status"] for run in runs] == ["SUCCESS", "SUCCESS"]
    first, second = sorted(runs, key=lambda run: run["startTime"])
    assert second["startTime"] >= first["endTime"]
    assert campaign_store.audience.counts(campaign_id) == {
        "pending": 0,
        "ready_to_send": 30,
        "failed": 1,
    }
    sent, message_ids = sent_audience_ids(sqs_client, dagster_instance_env["AWS_SQS_QUEUE_URL"])
    assert sum(sent.values()) == 30
    assert_every_recipient_accounted_for(campaign_store, campaign_id, sent, message_ids)
