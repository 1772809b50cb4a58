"""The sensor path with the real `dagster-daemon` on the production instance config.

Touches a PostgreSQL-backed DAGSTER_HOME made from `deploy/dagster.yaml`, a PostgreSQL campaign
store, fauxqs as SQS, and a `dagster-daemon run -w workspace.yaml` subprocess.
"""

import itertools
import json
import time
from collections import Counter

import dagster as dg
import pytest
import sqlalchemy as sa

from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.store.schema import campaigns
from tests.conftest import drain
from tests.e2e.conftest import (
    INTERVAL_MS,
    RUN_START_SECONDS,
    DagsterProcesses,
    add_campaign,
    assert_every_recipient_accounted_for,
    wait_for_campaign,
    wait_until,
)

pytestmark = pytest.mark.timeout(150)

# (valid, invalid) recipients of the campaigns the sensor starts together.
AUDIENCES = ((40, 3), (30, 2), (35, 0))
PACE = 4  # messages per second, each campaign


def test_daemon_sensor_processes_campaigns_side_by_side_into_one_queue(
    dagster_processes: DagsterProcesses,
    dagster_instance_env: dict[str, str],
    campaign_store: CampaignStore,
    instance: dg.DagsterInstance,
    sqs_client: object,
) -> None:
    """Three campaigns inserted as asset_generated at once: the sensor launches a run for each,
    the runs overlap, and each campaign keeps the invariant in the queue they share: every
    recipient ready_to_send with a message id in the queue, once, or failed with a reason.
    """
    audiences = {
        add_campaign(campaign_store, valid=v, invalid=i, status="draft"): (v, i)
        for v, i in AUDIENCES
    }
    # Paced, each sends for about ten seconds: longer than the runs take to start one after
    # another here, so they send side by side.
    with campaign_store.engine.begin() as connection:
        connection.execute(
            sa.update(campaigns)
            .where(campaigns.c.id.in_(list(audiences)))
            .values(status="asset_generated", max_messages_per_second=PACE)
        )
    daemon = dagster_processes.daemon()
    inserted = time.monotonic()

    for campaign_id, (valid, invalid) in audiences.items():
        counts = wait_for_campaign(
            campaign_store, campaign_id, INTERVAL_MS / 1000 + RUN_START_SECONDS + 15, [daemon]
        )
        assert counts == {"pending": 0, "ready_to_send": valid, "failed": invalid}
    rows = {
        campaign_id: wait_until(
            lambda campaign_id=campaign_id: (
                (row := campaign_store.campaigns.get(campaign_id)) and row["processed_at"] and row
            ),
            15,
            "the runs to record the campaigns' counts",
            processes=[daemon],
        )
        for campaign_id in audiences
    }
    elapsed = time.monotonic() - inserted

    messages = drain(sqs_client, dagster_instance_env["AWS_SQS_QUEUE_URL"])
    for campaign_id, (valid, invalid) in audiences.items():
        campaign = rows[campaign_id]
        assert campaign["status"] == "ready_to_launch"
        assert (campaign["queued_count"], campaign["failed_count"]) == (valid, invalid)
        assert campaign["lease_run_id"] is None
        own = [m for m in messages if json.loads(m["Body"])["campaignId"] == campaign_id]
        sent = Counter(json.loads(m["Body"])["campaignAudienceId"] for m in own)
        assert sum(sent.values()) == valid
        assert_every_recipient_accounted_for(
            campaign_store, campaign_id, sent, {m["MessageId"] for m in own}
        )
    assert len(messages) == sum(valid for valid, _ in AUDIENCES)
    runs = [
        record
        for campaign_id in audiences
        for record in instance.get_run_records(dg.RunsFilter(tags={"campaign_id": campaign_id}))
    ]
    assert len(runs) == len(AUDIENCES) and all(r.start_time and r.end_time for r in runs)
    # Side by side, not one after the other: some two runs were running at the same time.
    assert any(
        a.start_time < b.end_time and b.start_time < a.end_time  # type: ignore[operator]
        for a, b in itertools.combinations(runs, 2)
    ), [(r.start_time, r.end_time) for r in runs]
    assert elapsed < INTERVAL_MS / 1000 + RUN_START_SECONDS + 15
