"""A run worker killed with SIGKILL mid-send, noticed and resumed by the real daemon.

Touches a PostgreSQL-backed DAGSTER_HOME made from `deploy/dagster.yaml` (run monitoring, run
retries), a PostgreSQL campaign store, a FIFO queue on fauxqs behind the fault proxy
(which deduplicates FIFO resends as SQS does), and a `dagster-daemon run -w workspace.yaml`
subprocess. The test opens the same Dagster instance to read the runs and their events.
"""

import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest
import yaml

from campaign_pipeline.defs.tags import RESUME_ATTEMPT_TAG
from campaign_pipeline.resources.campaign_store import CampaignStore
from tests.e2e.conftest import (
    RUN_START_SECONDS,
    DagsterProcesses,
    add_campaign,
    assert_every_recipient_accounted_for,
    sent_audience_ids,
    wait_for_campaign,
    wait_until,
)
from tests.support.fault_proxy import FaultProxy

pytestmark = pytest.mark.timeout(400)

LOGGER = logging.getLogger(__name__)
# The proxy adds CALL_SECONDS to every call and forwards FIFO batches one at a time (it
# deduplicates them as SQS does), so the run sends for several seconds; it is killed after
# KILL_AFTER_BATCHES of its 40.
RECIPIENTS = 400
KILL_AFTER_BATCHES = 10
CALL_SECONDS = 0.2


def run_worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid of the process running the run's send step (the run worker, in process)."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START):
        if entry.step_key and entry.step_key.startswith("send_campaign_messages"):
            return entry.dagster_event.pid if entry.dagster_event else None
    return None


def how_resumed(run: dg.DagsterRun) -> str:
    """Which mechanism launched a run after the crash."""
    if RESUME_ATTEMPT_TAG in run.tags:
        return "recovery sensor"
    if "dagster/retry_number" in run.tags or run.parent_run_id:
        return "run retry"
    return "another launch"


@pytest.mark.parametrize("run_retries", [True, False], ids=["run retries on", "run retries off"])
def test_run_killed_mid_send_is_resumed_with_nothing_lost_or_sent_twice(
    run_retries: bool,
    dagster_processes: DagsterProcesses,
    dagster_instance_env: dict[str, str],
    instance: dg.DagsterInstance,
    campaign_store: CampaignStore,
    make_queue: Callable[..., str],
    sqs_endpoint: str,
    sqs_client: object,
    record_property: Callable[[str, object], None],
) -> None:
    """SIGKILL of the run worker mid-send: the run is marked failed, another run resumes the
    campaign, every recipient is queued once (FIFO deduplication drops the resends of what the
    killed run sent but had not recorded), and the campaign ends with no error and no lease.
    With run retries (deploy/dagster.yaml) the daemon's retry and the recovery sensor race to
    resume it; without them the recovery sensor does, taking over the killed run's live lease.
    """
    if not run_retries:
        config_path = Path(dagster_instance_env["DAGSTER_HOME"]) / "dagster.yaml"
        config = yaml.safe_load(config_path.read_text())
        config["run_retries"]["enabled"] = False
        config_path.write_text(yaml.safe_dump(config))
    queue_url = make_queue(fifo=True)
    with FaultProxy(sqs_endpoint, delay_seconds=CALL_SECONDS) as proxy:
        dagster_instance_env |= {"AWS_SQS_QUEUE_URL": queue_url, "AWS_ENDPOINT_URL_SQS": proxy.url}
        daemon = dagster_processes.daemon()
        campaign_id = add_campaign(campaign_store, valid=RECIPIENTS)

        killed_run_id = wait_until(
            lambda: campaign_store.campaigns.get(campaign_id)["lease_run_id"],
            RUN_START_SECONDS,
            "a run to claim the campaign",
            processes=[daemon],
        )
        pid = wait_until(
            lambda: run_worker_pid(instance, killed_run_id), 30, "the run worker's pid"
        )
        wait_until(
            lambda: proxy.summary()["forwarded"].get("SendMessageBatch", 0) >= KILL_AFTER_BATCHES,
            30,
            f"{KILL_AFTER_BATCHES} batches to reach the queue",
            processes=[daemon],
            interval=0.05,
        )
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        at_kill = campaign_store.audience.counts(campaign_id)
        assert at_kill["pending"] > 0, "the run had finished before it was killed"
        sent_at_kill = proxy.summary()["forwarded"]["SendMessageBatch"]

        killed = wait_until(
            lambda: (run := instance.get_run_by_id(killed_run_id)) and run.is_finished and run,
            30,
            "the killed run to be marked finished",
            processes=[daemon],
        )
        noticed_after = time.monotonic() - killed_at
        counts = wait_for_campaign(
            campaign_store, campaign_id, 2 * RUN_START_SECONDS + 60, processes=[daemon]
        )
        campaign = wait_until(
            lambda: (
                (row := campaign_store.campaigns.get(campaign_id))
                and row["lease_run_id"] is None
                and row["processed_at"]
                and row
            ),
            30,
            "the resuming run to release the campaign",
            processes=[daemon],
        )
        completed_after = time.monotonic() - killed_at

    finisher = wait_until(
        lambda: (
            (run := instance.get_run_by_id(campaign["last_run_id"])) and run.is_finished and run
        ),
        30,
        "the resuming run to finish",
        processes=[daemon],
    )
    runs = instance.get_runs(dg.RunsFilter(tags={"campaign_id": campaign_id}))
    resumed_by = how_resumed(finisher)
    record_property("killed_run_status", killed.status.value)
    record_property("killed_run_noticed_after_s", round(noticed_after, 1))
    record_property("resumed_by", resumed_by)
    record_property("completed_after_s", round(completed_after, 1))
    record_property("runs", sorted((run.status.value, how_resumed(run)) for run in runs))
    record_property("batches_at_kill", sent_at_kill)
    record_property("deduplicated_resends", proxy.deduplicated_entries)
    # Shown by `pytest -rA`: which path resumed the campaign is a race between two daemons.
    LOGGER.warning(
        f"killed run {killed.status.value} after {noticed_after:.1f} s; resumed by {resumed_by}; "
        f"complete {completed_after:.1f} s after the kill; {sent_at_kill} batches queued and "
        f"{RECIPIENTS - at_kill['pending']} recorded at the kill, "
        f"{proxy.deduplicated_entries} resends deduplicated; runs: "
        f"{sorted((run.status.value, how_resumed(run)) for run in runs)}"
    )

    assert killed.status == dg.DagsterRunStatus.FAILURE
    assert finisher.run_id != killed_run_id
    assert finisher.status == dg.DagsterRunStatus.SUCCESS
    assert resumed_by in (("recovery sensor", "run retry") if run_retries else ("recovery sensor",))
    assert proxy.deduplicated_entries > 0
    assert counts == {"pending": 0, "ready_to_send": RECIPIENTS, "failed": 0}
    assert campaign["status"] == "ready_to_launch"
    assert (campaign["queued_count"], campaign["last_error"]) == (RECIPIENTS, None)
    assert campaign["resume_attempts"] == 0
    sent, message_ids = sent_audience_ids(sqs_client, queue_url)
    assert sum(sent.values()) == RECIPIENTS
    assert_every_recipient_accounted_for(campaign_store, campaign_id, sent, message_ids)
