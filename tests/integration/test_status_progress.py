"""The `progress` block of `status --json` (and of the HTTP API's campaign document).

`campaign_report` shows the sending run's pace and the time left at it, from the outcomes the
store recorded since the run started; nothing while no run is sending.
"""

from datetime import timedelta

import pytest

from campaign_pipeline.clock import utcnow
from campaign_pipeline.failure_codes import FailureCode
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.services.status import RunSummary, campaign_report
from campaign_pipeline.store.records import Outcomes
from tests.support.campaigns import add_recipients, add_template_campaign

STARTED_SECONDS_AGO = 10.0


def run(status: str, started_seconds_ago: float = STARTED_SECONDS_AGO) -> RunSummary:
    start = utcnow() - timedelta(seconds=started_seconds_ago)
    return RunSummary(
        run_id="run-1", status=status, start_time=start, end_time=None, url="http://dagster/runs/1"
    )


def sending_campaign(store: CampaignStore, recipients: int, handled: int) -> str:
    """A campaign claimed by run-1 whose first `handled` recipients have an outcome now."""
    campaign_id = add_template_campaign(store)
    add_recipients(store, campaign_id, recipients)
    store.claims.claim(campaign_id, "run-1", 60)
    (chunk,) = store.audience.pending_chunks(campaign_id, recipients)
    ids = chunk["id"].to_list()[:handled]
    outcomes = Outcomes()
    outcomes.add_sent(ids[:-2], [f"m-{i}" for i in range(len(ids) - 2)])
    outcomes.add_failed(ids[-2:], ["rejected", "rejected"], FailureCode.SQS_REJECTED)
    store.audience.record_outcomes(campaign_id, "run-1", outcomes, 60)
    return campaign_id


def test_a_sending_run_shows_its_pace_and_the_time_left(store: CampaignStore) -> None:
    campaign_id = sending_campaign(store, recipients=100, handled=40)
    sending = run("STARTED")
    progress = campaign_report(store, campaign_id, [sending])["progress"]
    assert progress["run_id"] == "run-1"
    assert progress["handled"] == 40
    # 40 outcomes over the ten seconds since the run started (and the moments this test took).
    assert 40 / (STARTED_SECONDS_AGO + 5) <= progress["messages_per_second"] <= 40 / 10 + 0.05
    assert progress["eta_seconds"] == round(60 / progress["messages_per_second"])


@pytest.mark.parametrize("status", ["SUCCESS", "FAILURE", "CANCELED", "QUEUED"])
def test_no_progress_without_a_sending_run(store: CampaignStore, status: str) -> None:
    campaign_id = sending_campaign(store, recipients=10, handled=4)
    assert campaign_report(store, campaign_id, [run(status)])["progress"] is None
    assert campaign_report(store, campaign_id, [])["progress"] is None


def test_outcomes_before_the_run_started_are_not_its_progress(store: CampaignStore) -> None:
    campaign_id = sending_campaign(store, recipients=10, handled=4)
    later = run("STARTED", started_seconds_ago=-60)
    progress = campaign_report(store, campaign_id, [later])["progress"]
    assert (progress["handled"], progress["messages_per_second"], progress["eta_seconds"]) == (
        0,
        None,
        None,
    )
