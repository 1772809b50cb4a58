"""The rate cap in real time and through the job.

The real-time send runs `ShardSend` against moto's server over HTTP and PostgreSQL at 40
messages/s for about ten seconds; the job tests run `execute_in_process` on PostgreSQL with tiny
audiences, and one run under the multiprocess executor, its two send steps in two processes, is
timed by moto's SentTimestamp. The token bucket itself is in `tests/unit/test_pacing.py`.
"""

import bisect
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from campaign_pipeline.defs.jobs import campaign_run_config, process_campaign_messages
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import SqsQueue
from campaign_pipeline.sending.lease import Lease
from campaign_pipeline.sending.shard import BatchQueue, ShardSend
from campaign_pipeline.sqs import SqsBatchQueue
from tests.conftest import REGION, drain
from tests.integration.test_job import failure_message
from tests.support.campaigns import add_recipients, add_template_campaign
from tests.support.send_processes import run_in_send_processes

LEASE_SECONDS = 60.0


class TimedClient:
    """A boto3 SQS client noting when each batch with accepted entries was answered, and size."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self._accepted: list[tuple[float, int]] = []
        self._lock = threading.Lock()

    def get_queue_attributes(self, **arguments: Any) -> Any:
        return self.client.get_queue_attributes(**arguments)

    def send_message_batch(self, **arguments: Any) -> Any:
        response = self.client.send_message_batch(**arguments)
        with self._lock:
            if accepted := len(response.get("Successful", [])):
                self._accepted.append((time.monotonic(), accepted))
        return response

    @property
    def accepted(self) -> list[tuple[float, int]]:
        with self._lock:
            return sorted(self._accepted)


class TimedQueue(SqsBatchQueue):
    """The real batch queue over a `TimedClient`."""

    client: TimedClient

    @property
    def accepted(self) -> list[tuple[float, int]]:
        return self.client.accepted


@pytest.fixture
def timed_queue(sqs_endpoint: str, make_queue: Callable[..., str]) -> TimedQueue:
    resource = SqsQueue(
        queue_url=make_queue(fifo=False), region_name=REGION, endpoint_url=sqs_endpoint
    )
    return TimedQueue(TimedClient(resource.client), resource.queue_url)


def send(
    store: CampaignStore, queue: BatchQueue, campaign_id: str, cap: float | None
) -> Callable[[], Any]:
    message = store.claims.claim(campaign_id, "run-1", LEASE_SECONDS).message
    lease = Lease(store.claims, campaign_id, "run-1", LEASE_SECONDS)
    return ShardSend(
        message,
        lease,
        store.audience,
        queue,
        store.suppressions,
        recipients_per_chunk=1_000,
        outcomes_per_write=100,
        max_messages_per_second=cap,
    ).run


def test_a_capped_send_keeps_to_its_rate(
    postgres_store: CampaignStore, timed_queue: TimedQueue
) -> None:
    """420 recipients at 40 messages/s: about 40/s from the first accepted batch to the last."""
    campaign_id = add_template_campaign(postgres_store)
    add_recipients(postgres_store, campaign_id, 420)
    started = time.monotonic()
    stats = send(postgres_store, timed_queue, campaign_id, 40.0)()
    elapsed = time.monotonic() - started
    assert (stats.queued, stats.failed, stats.stopped) == (420, 0, None)
    accepted = timed_queue.accepted
    assert all(count == 10 for _, count in accepted)  # whole batches
    first, last = accepted[0][0], accepted[-1][0]
    rate = (stats.queued - accepted[0][1]) / (last - first)
    assert 36 <= rate <= 44, f"{rate:.1f} messages/s over {last - first:.1f} s"
    assert elapsed < 20
    assert postgres_store.audience.counts(campaign_id) == {
        "pending": 0,
        "ready_to_send": 420,
        "failed": 0,
    }


def test_a_pause_ends_a_slow_capped_send_within_seconds(
    postgres_store: CampaignStore, timed_queue: TimedQueue
) -> None:
    """At 0.5 messages/s the next batch is 20 s away; a pause still ends the send in seconds."""
    campaign_id = add_template_campaign(postgres_store)
    add_recipients(postgres_store, campaign_id, 100)
    run = send(postgres_store, timed_queue, campaign_id, 0.5)
    result: dict[str, Any] = {}
    sender = threading.Thread(target=lambda: result.update(stats=run(), at=time.monotonic()))
    sender.start()
    deadline = time.monotonic() + 10
    while not timed_queue.accepted and time.monotonic() < deadline:
        time.sleep(0.01)
    assert timed_queue.accepted, "no batch was accepted"
    postgres_store.control.apply(campaign_id, "pause", "alice@ops-host (cli)")
    paused_at = time.monotonic()
    sender.join(timeout=30)
    # The status poll (every second) sees it, the paced wait wakes within a tenth of a second.
    assert result["at"] - paused_at < 3.0
    stats = result["stats"]
    assert (stats.stopped, stats.queued) == ("paused", 10)
    assert postgres_store.audience.counts(campaign_id)["pending"] == 90


def run_job(
    store: CampaignStore, queue: SqsQueue, campaign_id: str, processes: int = 1, **config: Any
) -> dg.ExecuteInProcessResult:
    # execute_in_process runs every step in this process whatever the execution block says;
    # plan_shards reads the block as a launched run's executor would use it.
    return process_campaign_messages.execute_in_process(
        run_config=campaign_run_config(campaign_id, processes, **config),
        resources={"campaign_store": store, "sqs_queue": queue},
        raise_on_error=False,
    )


def shares(result: dg.ExecuteInProcessResult) -> list[float | None]:
    return [
        shard.max_messages_per_second
        for _, shard in sorted(result.output_for_node("plan_shards").items())
    ]


@pytest.mark.parametrize(
    ("column", "variable", "expected"),
    [(200.0, "1000", 200.0), (None, "1000", 1000.0), (250.0, None, 250.0), (None, None, None)],
)
def test_the_campaigns_column_overrides_the_variable(
    postgres_store: CampaignStore,
    make_sqs_queue: Callable[..., SqsQueue],
    monkeypatch: pytest.MonkeyPatch,
    column: float | None,
    variable: str | None,
    expected: float | None,
) -> None:
    """max_messages_per_second, else CAMPAIGN_MAX_MESSAGES_PER_SECOND, else no cap."""
    if variable is not None:
        monkeypatch.setenv("CAMPAIGN_MAX_MESSAGES_PER_SECOND", variable)
    campaign_id = add_template_campaign(postgres_store, max_messages_per_second=column)
    add_recipients(postgres_store, campaign_id, 3)
    result = run_job(postgres_store, make_sqs_queue(fifo=False), campaign_id)
    assert result.success
    assert result.output_for_node("claim_campaign").max_messages_per_second == expected
    assert shares(result) == [expected]
    assert postgres_store.audience.counts(campaign_id)["ready_to_send"] == 3


def test_the_cap_is_divided_among_the_steps_the_executor_runs_at_once(
    postgres_store: CampaignStore, make_sqs_queue: Callable[..., SqsQueue]
) -> None:
    """Three shards, two processes: each step gets half the cap; in one process, all of it."""
    queue = make_sqs_queue(fifo=False)
    for processes, expected in ((2, 450.0), (1, 900.0)):
        campaign_id = add_template_campaign(postgres_store, max_messages_per_second=900.0)
        add_recipients(postgres_store, campaign_id, 30)
        result = run_job(
            postgres_store, queue, campaign_id, processes=processes, recipients_per_shard=10
        )
        assert result.success
        assert shares(result) == [expected] * 3
        assert postgres_store.audience.counts(campaign_id)["ready_to_send"] == 30


def test_a_bad_variable_fails_the_run_in_one_line_before_the_claim(
    postgres_store: CampaignStore,
    make_sqs_queue: Callable[..., SqsQueue],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CAMPAIGN_MAX_MESSAGES_PER_SECOND=fast: the run fails saying so; the campaign is untouched."""
    monkeypatch.setenv("CAMPAIGN_MAX_MESSAGES_PER_SECOND", "fast")
    campaign_id = add_template_campaign(postgres_store)
    add_recipients(postgres_store, campaign_id, 3)
    result = run_job(postgres_store, make_sqs_queue(fifo=False), campaign_id)
    assert not result.success
    assert failure_message(result) == (
        "CAMPAIGN_MAX_MESSAGES_PER_SECOND must be a number, not 'fast'"
    )
    campaign = postgres_store.campaigns.get(campaign_id)
    assert (campaign["status"], campaign["lease_run_id"]) == ("asset_generated", None)


def test_a_non_positive_column_fails_the_campaign_with_the_reason(
    postgres_store: CampaignStore, make_sqs_queue: Callable[..., SqsQueue]
) -> None:
    """A cap of 0 in the campaign's row can never be sent at: the campaign fails, saying why."""
    campaign_id = add_template_campaign(postgres_store, max_messages_per_second=0.0)
    add_recipients(postgres_store, campaign_id, 3)
    result = run_job(postgres_store, make_sqs_queue(fifo=False), campaign_id)
    assert not result.success
    reason = "max_messages_per_second must be a positive number of messages per second, not 0.0"
    assert failure_message(result) == f"campaign {campaign_id} cannot be sent: {reason}"
    campaign = postgres_store.campaigns.get(campaign_id)
    assert (campaign["status"], campaign["last_error"]) == ("failed", reason)
    assert postgres_store.audience.counts(campaign_id)["pending"] == 3


def test_two_send_processes_together_stay_under_the_campaigns_cap(
    postgres_store: CampaignStore,
    postgres_url: str,
    make_queue: Callable[..., str],
    sqs_endpoint: str,
    sqs_client: object,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two shards in two processes at 80 messages/s: each sends at 40, together at most 80."""
    campaign_id = add_template_campaign(postgres_store, max_messages_per_second=80.0)
    add_recipients(postgres_store, campaign_id, 400)
    queue_url = make_queue(fifo=False)
    with run_in_send_processes(
        monkeypatch,
        tmp_path,
        database_url=postgres_url,
        queue_url=queue_url,
        sqs_endpoint=sqs_endpoint,
        campaign_id=campaign_id,
        recipients_per_shard=200,
    ) as (result, instance):
        assert result.success
        starts = instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_START)
        pids = {e.dagster_event.pid for e in starts if e.step_key.startswith("send_campaign")}
        logged = [entry.message for entry in instance.all_logs(result.run_id)]
    assert len(pids) == 2
    assert any("2 shards, 2 at once, each at most 40 messages/s" in line for line in logged)
    received = drain(sqs_client, queue_url)
    sent = sorted(int(m["Attributes"]["SentTimestamp"]) / 1000 for m in received)
    assert len(sent) == 400
    # Each step's bucket holds one batch: two batches over the cap at most (and one more for
    # the timestamps' millisecond rounding and the calls' jitter).
    for window in (2.0, 4.0):
        most = max(bisect.bisect_left(sent, t + window) - i for i, t in enumerate(sent))
        assert most <= 80 * window + 2 * 10 + 10, f"{most} messages within {window} s"
    # Steps that start apart send below the cap for a while; never much above it.
    assert (len(sent) - 20) / (sent[-1] - sent[0]) <= 80 * 1.1
