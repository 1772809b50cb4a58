"""An operator's controls against the real daemon and webserver: pause, resume, cancel,
terminate, schedule, and campaigns as partitions.

Touches a PostgreSQL-backed DAGSTER_HOME made from `deploy/dagster.yaml`, a PostgreSQL campaign
store, a standard queue on fauxqs behind the fault proxy (which slows every call, and timestamps
each batch the run sends and each one SQS stored), two calls in flight (SQS_MAX_CONCURRENT_BATCHES),
`dagster-daemon run` and `dagster-webserver` subprocesses (sensors tick every second), and the
`campaign-pipeline` console script. On a standard queue nothing dedupes a resend: "exactly once"
below is the pipeline's own doing.
"""

import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import pytest

from campaign_pipeline.clock import as_utc
from campaign_pipeline.resources.campaign_store import CampaignStore
from tests.e2e.conftest import (
    RUN_START_SECONDS,
    DagsterProcess,
    DagsterProcesses,
    add_campaign,
    audience_outcomes,
    campaign_runs,
    graphql,
    run_cli,
    wait_for_campaign,
    wait_until,
)
from tests.support.fault_proxy import Call, FaultProxy
from tests.support.invariant import InvariantReport, check_campaign_invariant, drain_queue

pytestmark = pytest.mark.timeout(300)

# Each call through the proxy takes CALL_SECONDS more, so a campaign of this size with two calls
# in flight sends for several seconds (about 7 batches a second):
# long enough to be stopped mid-send. (The default 64 in flight would hold most of it at once.)
RECIPIENTS = 700
CONCURRENCY = 2
CALL_SECONDS = 0.3
# The bound from `pause` to the last message SQS stored.
STOP_SECONDS = 5.0
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")


@dataclass
class SlowSqs:
    """The fault proxy in front of SQS, remembering when SQS stored each batch."""

    proxy: FaultProxy
    queue_url: str
    sent_at: list[float] = field(default_factory=list)
    stored_at: list[float] = field(default_factory=list)

    def batches(self) -> int:
        """SendMessageBatch calls the run has sent."""
        return len(self.sent_at)

    def last_sent(self) -> float:
        """When the run sent its latest batch (time.time)."""
        return max(self.sent_at)

    def last_stored(self) -> float:
        """When SQS stored the latest batch (time.time)."""
        return max(self.stored_at)

    def check(
        self, store: CampaignStore, campaign_id: str, sqs_client: object, **options: Any
    ) -> InvariantReport:
        """The invariant for the campaign on this (standard) queue, which it drains."""
        return check_campaign_invariant(
            store, campaign_id, sqs_client, self.queue_url, fifo=False, **options
        )


@pytest.fixture
def slow_sqs(
    sqs_endpoint: str,
    make_queue: Callable[..., str],
    dagster_instance_env: dict[str, str],
    sqs_client: Any,
) -> Iterator[SlowSqs]:
    """A standard queue reached through a slowing proxy; the processes' environment uses it."""
    sent_at: list[float] = []
    stored_at: list[float] = []

    def hook(call: Call, stage: str) -> None:
        if call.action == "SendMessageBatch":
            # Wall clock, to compare with the campaign's paused_at.
            (sent_at if stage == "received" else stored_at).append(time.time())

    with FaultProxy(sqs_endpoint, delay_seconds=CALL_SECONDS, hook=hook) as proxy:
        queue_url = make_queue(fifo=False)
        dagster_instance_env |= {
            "AWS_SQS_QUEUE_URL": queue_url,
            "AWS_ENDPOINT_URL_SQS": proxy.url,
            "SQS_MAX_CONCURRENT_BATCHES": str(CONCURRENCY),
        }
        yield SlowSqs(proxy, queue_url, sent_at, stored_at)


def row(store: CampaignStore, campaign_id: str) -> dict:
    campaign = store.campaigns.get(campaign_id)
    assert campaign is not None
    return campaign


def wait_for_sending(store: CampaignStore, campaign_id: str, daemon: DagsterProcess) -> str:
    """The id of the run sending for the campaign, once its live counts show 100 queued."""
    wait_until(
        lambda: row(store, campaign_id)["queued_count"] >= 100,
        RUN_START_SECONDS + 30,
        "the run to queue 100 messages (live counts)",
        processes=[daemon],
    )
    return row(store, campaign_id)["lease_run_id"]


def wait_for_run_end(store: CampaignStore, campaign_id: str, run_id: str, timeout: float) -> dict:
    """The campaign once the run has let go of it (its lease released)."""
    return wait_until(
        lambda: (campaign := row(store, campaign_id))["lease_run_id"] != run_id and campaign,
        timeout,
        f"run {run_id} to release campaign {campaign_id}",
    )


def run_statuses(instance: dg.DagsterInstance, campaign_id: str) -> dict[str, str]:
    """Run id -> status of the campaign's runs, read from the Dagster instance."""
    return {
        run.run_id: run.status.value
        for run in instance.get_runs(dg.RunsFilter(tags={"campaign_id": campaign_id}))
    }


# The sensors that could start a stopped campaign again.
RESTARTING_SENSORS = ("asset_generated_campaigns_sensor", "resume_stalled_campaigns_sensor")
TICKS_WATCHED = 3


def sensor_ticks(daemon: DagsterProcess) -> Counter[str]:
    """How many times the daemon has evaluated each sensor, from its log."""
    return Counter(
        re.findall(
            r"Checking for new runs for sensor: (\w+)", daemon.log.read_text(errors="replace")
        )
    )


def assert_nothing_more_starts(
    sqs: SlowSqs, instance: dg.DagsterInstance, campaign_id: str, daemon: DagsterProcess
) -> None:
    """While each sensor that could restart it ticks TICKS_WATCHED more times, no run starts
    and no batch is sent.

    Runs are compared by id: the stopped run may still be finishing (STARTED, then SUCCESS).
    """
    runs, batches = set(run_statuses(instance, campaign_id)), sqs.batches()
    before = sensor_ticks(daemon)
    wait_until(
        lambda: all(
            sensor_ticks(daemon)[name] >= before[name] + TICKS_WATCHED
            for name in RESTARTING_SENSORS
        ),
        RUN_START_SECONDS,
        f"{TICKS_WATCHED} more ticks of {', '.join(RESTARTING_SENSORS)}",
        processes=[daemon],
    )
    assert set(run_statuses(instance, campaign_id)) == runs
    assert sqs.batches() == batches


def test_pause_stops_a_run_within_seconds_and_resume_sends_the_rest_once(
    dagster_processes: DagsterProcesses,
    dagster_instance_env: dict[str, str],
    instance: dg.DagsterInstance,
    campaign_store: CampaignStore,
    slow_sqs: SlowSqs,
    sqs_client: object,
    record_property: Callable[[str, object], None],
) -> None:
    """`pause` mid-send: the run stops within 5 s and succeeds (no failure recorded), the rest
    stays pending and no sensor starts it; `resume` sends exactly the rest, once each.
    """
    daemon = dagster_processes.daemon()
    campaign_id = add_campaign(campaign_store, valid=RECIPIENTS, invalid=5)
    run_id = wait_for_sending(campaign_store, campaign_id, daemon)

    paused = run_cli("pause", campaign_id, env=dagster_instance_env)
    assert paused.returncode == 0, paused.stderr
    assert f"campaign {campaign_id} paused (was 'ready_to_launch')" in paused.stdout
    campaign = wait_for_run_end(campaign_store, campaign_id, run_id, 60)
    # From the moment the pause was written (not the command's start-up, seconds under load)
    # to the last batch the run sent; SQS, behind the slow proxy, stores them later.
    paused_at = as_utc(campaign["paused_at"]).timestamp()
    stop_seconds = slow_sqs.last_sent() - paused_at
    record_property("pause_to_last_batch_sent_seconds", round(stop_seconds, 2))
    record_property(
        "pause_to_last_batch_stored_seconds", round(slow_sqs.last_stored() - paused_at, 2)
    )
    assert stop_seconds < STOP_SECONDS

    assert campaign["status"] == "paused"
    assert campaign["last_error"] is None
    counts = campaign_store.audience.counts(campaign_id)
    assert counts["pending"] > 0
    assert (campaign["queued_count"], campaign["pending_count"]) == (
        counts["ready_to_send"],
        counts["pending"],
    )
    wait_until(
        lambda: run_statuses(instance, campaign_id).get(run_id) in FINISHED,
        30,
        "the paused run to end",
    )
    assert run_statuses(instance, campaign_id) == {run_id: "SUCCESS"}
    assert_nothing_more_starts(slow_sqs, instance, campaign_id, daemon)

    resumed = run_cli("resume", campaign_id, env=dagster_instance_env)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed as 'ready_to_launch'" in resumed.stdout
    wait_for_campaign(campaign_store, campaign_id, RUN_START_SECONDS + 60, processes=[daemon])
    assert len(run_statuses(instance, campaign_id)) == 2
    report = slow_sqs.check(campaign_store, campaign_id, sqs_client)
    assert (report.queued, report.failed) == (RECIPIENTS, 5)


def test_cancel_stops_a_run_for_good(
    dagster_processes: DagsterProcesses,
    dagster_instance_env: dict[str, str],
    instance: dg.DagsterInstance,
    campaign_store: CampaignStore,
    slow_sqs: SlowSqs,
    sqs_client: object,
) -> None:
    """`cancel` mid-send stops the run; with the sensors ticking every second nothing starts
    it again, and `resume`, `process` and `trigger` refuse it; its pending stay pending.
    """
    daemon = dagster_processes.daemon()
    campaign_id = add_campaign(campaign_store, valid=RECIPIENTS)
    run_id = wait_for_sending(campaign_store, campaign_id, daemon)

    cancelled = run_cli("cancel", campaign_id, env=dagster_instance_env)
    assert cancelled.returncode == 0, cancelled.stderr
    campaign = wait_for_run_end(campaign_store, campaign_id, run_id, 60)
    assert campaign["status"] == "cancelled"
    assert_nothing_more_starts(slow_sqs, instance, campaign_id, daemon)

    for command in (["resume"], ["process"], ["trigger", "--dagster-url", "http://127.0.0.1:9"]):
        refused = run_cli(*command, campaign_id, env=dagster_instance_env)
        assert refused.returncode == 2, refused
        assert "cancelled" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    counts = campaign_store.audience.counts(campaign_id)
    assert counts["pending"] > 0
    assert row(campaign_store, campaign_id)["pending_count"] == counts["pending"]
    slow_sqs.check(campaign_store, campaign_id, sqs_client, expect_pending_allowed=True)


TERMINATE = """
mutation($runId: String!) {
  terminateRun(runId: $runId) {
    __typename
    ... on TerminateRunFailure { message }
    ... on PythonError { message }
  }
}
"""


def test_terminate_from_graphql_pauses_the_campaign(
    dagster_processes: DagsterProcesses,
    dagster_instance_env: dict[str, str],
    instance: dg.DagsterInstance,
    campaign_store: CampaignStore,
    slow_sqs: SlowSqs,
    sqs_client: object,
) -> None:
    """The UI's Terminate (GraphQL terminateRun) ends the run CANCELED with the batches in
    flight recorded and the campaign paused; nothing restarts it; `resume` sends the rest once.
    """
    webserver = dagster_processes.webserver()
    daemon = dagster_processes.daemon()
    campaign_id = add_campaign(campaign_store, valid=RECIPIENTS)
    run_id = wait_for_sending(campaign_store, campaign_id, daemon)

    terminated = graphql(webserver.url, TERMINATE, {"runId": run_id})["terminateRun"]
    assert terminated["__typename"] == "TerminateRunSuccess", terminated
    wait_until(
        lambda: run_statuses(instance, campaign_id).get(run_id) == "CANCELED",
        60,
        "the terminated run to end CANCELED",
        processes=[daemon, webserver],
    )
    campaign = wait_until(
        lambda: (c := row(campaign_store, campaign_id))["status"] == "paused" and c,
        30,
        "the campaign to be paused",
    )
    assert "terminated" in campaign["paused_by"]
    assert campaign["lease_run_id"] is None
    assert_nothing_more_starts(slow_sqs, instance, campaign_id, daemon)

    assert run_cli("resume", campaign_id, env=dagster_instance_env).returncode == 0
    wait_for_campaign(campaign_store, campaign_id, RUN_START_SECONDS + 60, processes=[daemon])
    # What the terminated run had in flight was recorded: the resume sent none of it again.
    slow_sqs.check(campaign_store, campaign_id, sqs_client)


def test_scheduled_campaign_starts_at_its_send_at_not_before(
    dagster_processes: DagsterProcesses,
    dagster_instance_env: dict[str, str],
    instance: dg.DagsterInstance,
    campaign_store: CampaignStore,
    sqs_client: object,
) -> None:
    """A campaign with send_at ahead is left alone until then and started at a tick after."""
    campaign_id = add_campaign(campaign_store, valid=20)
    send_at = datetime.now(UTC) + timedelta(seconds=12)
    scheduled = run_cli("schedule", campaign_id, send_at.isoformat(), env=dagster_instance_env)
    assert scheduled.returncode == 0, scheduled.stderr
    daemon = dagster_processes.daemon()

    wait_until(lambda: datetime.now(UTC) >= send_at - timedelta(seconds=1), 30, "send_at")
    assert row(campaign_store, campaign_id)["last_run_id"] is None
    assert run_statuses(instance, campaign_id) == {}
    wait_for_campaign(campaign_store, campaign_id, RUN_START_SECONDS + 10, processes=[daemon])
    first_outcome = min(r["updated_at"] for r in audience_outcomes(campaign_store, campaign_id))
    assert first_outcome >= send_at
    check_campaign_invariant(
        campaign_store, campaign_id, sqs_client, dagster_instance_env["AWS_SQS_QUEUE_URL"],
        fifo=False,
    )  # fmt: skip


def test_pause_and_resume_racing_the_sensors_and_each_other_keep_the_invariant(
    dagster_processes: DagsterProcesses,
    dagster_instance_env: dict[str, str],
    instance: dg.DagsterInstance,
    campaign_store: CampaignStore,
    slow_sqs: SlowSqs,
    sqs_client: object,
) -> None:
    """Two operators pausing and resuming at random while both sensors tick every second: the
    campaign ends with every recipient queued exactly once.
    """
    daemon = dagster_processes.daemon()
    campaign_id = add_campaign(campaign_store, valid=RECIPIENTS)
    wait_for_sending(campaign_store, campaign_id, daemon)
    env = dagster_instance_env
    errors: list[str] = []

    def operator(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(4):
            for command in ("pause", "resume"):
                done = run_cli(command, campaign_id, env=env)
                if done.returncode not in (0, 2) or "Traceback" in done.stderr + done.stdout:
                    errors.append(f"{command}: {done.returncode} {done.stderr}")
                time.sleep(rng.uniform(0, 1.5))

    operators = [threading.Thread(target=operator, args=(seed,)) for seed in (1, 2)]
    for thread in operators:
        thread.start()
    for thread in operators:
        thread.join()
    assert not errors, errors
    if row(campaign_store, campaign_id)["status"] == "paused":
        assert run_cli("resume", campaign_id, env=env).returncode == 0
    wait_for_campaign(campaign_store, campaign_id, RUN_START_SECONDS + 90, processes=[daemon])
    report = slow_sqs.check(campaign_store, campaign_id, sqs_client)
    assert (report.queued, report.failed) == (RECIPIENTS, 0)


PARTITION_STATUSES = """
query($selector: RepositorySelector!) {
  partitionSetOrError(
    repositorySelector: $selector, partitionSetName: "process_campaign_messages_partition_set"
  ) {
    __typename
    ... on PartitionSet {
      partitionStatusesOrError {
        __typename
        ... on PartitionStatuses { results { partitionName runStatus runId } }
      }
    }
    ... on PythonError { message }
  }
}
"""

BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
  }
}
"""

SELECTOR = {"repositoryLocationName": "campaign_pipeline", "repositoryName": "__repository__"}


def partition_statuses(url: str) -> dict[str, tuple[str, str]]:
    data = graphql(url, PARTITION_STATUSES, {"selector": SELECTOR})["partitionSetOrError"]
    assert data["__typename"] == "PartitionSet", data
    return {
        result["partitionName"]: (result["runStatus"], result["runId"])
        for result in data["partitionStatusesOrError"]["results"]
    }


def test_campaign_partition_shows_its_runs_and_a_backfill_of_a_finished_one_sends_nothing(
    dagster_processes: DagsterProcesses,
    dagster_instance_env: dict[str, str],
    campaign_store: CampaignStore,
    sqs_client: object,
) -> None:
    """Jobs -> process_campaign_messages -> Partitions lists the campaign with its run; a
    backfill of it (a finished campaign) runs through the claim and queues nothing more.
    """
    webserver = dagster_processes.webserver()
    daemon = dagster_processes.daemon()
    campaign_id = add_campaign(campaign_store, valid=30)
    wait_for_campaign(campaign_store, campaign_id, RUN_START_SECONDS + 10, processes=[daemon])
    (first_run,) = campaign_runs(webserver.url, campaign_id)
    wait_until(
        lambda: partition_statuses(webserver.url).get(campaign_id, ("", ""))[0] == "SUCCESS",
        60,
        "the campaign's partition to show its successful run",
    )
    assert partition_statuses(webserver.url)[campaign_id][1] == first_run["runId"]
    queued_before = check_campaign_invariant(
        campaign_store, campaign_id, sqs_client, dagster_instance_env["AWS_SQS_QUEUE_URL"],
        fifo=False,
    ).queued  # fmt: skip

    params = {
        "selector": {"partitionSetName": "process_campaign_messages_partition_set"}
        | {"repositorySelector": SELECTOR},
        "partitionNames": [campaign_id],
    }
    launched = graphql(webserver.url, BACKFILL, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    runs = wait_until(
        lambda: (
            len(r := campaign_runs(webserver.url, campaign_id)) == 2
            and r[0]["status"] in FINISHED
            and r
        ),
        RUN_START_SECONDS + 30,
        "the backfill's run to finish",
        processes=[daemon, webserver],
    )
    assert runs[0]["status"] == "SUCCESS"
    assert partition_statuses(webserver.url)[campaign_id] == ("SUCCESS", runs[0]["runId"])
    assert campaign_store.audience.counts(campaign_id) == {
        "pending": 0,
        "ready_to_send": queued_before,
        "failed": 0,
    }
    # Nothing new in the queue: the invariant drained it after the first run.
    assert drain_queue(sqs_client, dagster_instance_env["AWS_SQS_QUEUE_URL"]) == []
