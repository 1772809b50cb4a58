"""The sensor path with the real `dagster-daemon` on the production instance config.

Touches a PostgreSQL-backed DAGSTER_HOME made from `deploy/dagster.yaml`, a PostgreSQL campaign
store, moto's SQS server, and a `dagster-daemon run -w workspace.yaml` subprocess.
"""

import time

import pytest

from campaign_pipeline.resources.campaign_store import CampaignStore
from tests.e2e.conftest import (
    INTERVAL_MS,
    RUN_START_SECONDS,
    DagsterProcesses,
    add_campaign,
    assert_every_recipient_accounted_for,
    sent_audience_ids,
    wait_for_campaign,
    wait_until,
)

pytestmark = pytest.mark.timeout(150)


def test_daemon_sensor_processes_an_asset_generated_campaign(
    dagster_processes: DagsterProcesses,
    dagster_instance_env: dict[str, str],
    campaign_store: CampaignStore,
    sqs_client: object,
) -> None:
    """A campaign inserted as asset_generated is sent by a sensor-launched run, each recipient
    ready_to_send with a message id in the queue or failed with a reason, within the bound.
    """
    daemon = dagster_processes.daemon()
    campaign_id = add_campaign(campaign_store, valid=40, invalid=3)
    inserted = time.monotonic()

    counts = wait_for_campaign(
        campaign_store, campaign_id, INTERVAL_MS / 1000 + RUN_START_SECONDS, processes=[daemon]
    )
    campaign = wait_until(
        lambda: (row := campaign_store.get_campaign(campaign_id)) and row["processed_at"] and row,
        15,
        "the run to record the campaign's counts",
        processes=[daemon],
    )
    elapsed = time.monotonic() - inserted

    assert counts == {"pending": 0, "ready_to_send": 40, "failed": 3}
    assert campaign["status"] == "ready_to_launch"
    assert (campaign["queued_count"], campaign["failed_count"]) == (40, 3)
    assert campaign["lease_run_id"] is None
    sent, message_ids = sent_audience_ids(sqs_client, dagster_instance_env["AWS_SQS_QUEUE_URL"])
    assert sum(sent.values()) == 40
    assert_every_recipient_accounted_for(campaign_store, campaign_id, sent, message_ids)
    assert elapsed < INTERVAL_MS / 1000 + RUN_START_SECONDS
