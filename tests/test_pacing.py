"""The rate cap: the token bucket on a fake clock, a capped send in real time, where the cap
comes from, and how it is shared among send steps.

The bucket's tests need nothing. The real-time send runs `ShardSend` against
moto's server over HTTP and PostgreSQL at 40 messages/s for about ten seconds; the job tests
run `execute_in_process` on PostgreSQL with tiny audiences, and one run under the multiprocess
executor, its two send steps in two processes, is timed by moto's SentTimestamp.
"""

import bisect
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from campaign_pipeline.defs.executor import send_steps_at_once
from campaign_pipeline.defs.jobs import campaign_run_config, process_campaign_messages
from campaign_pipeline.errors import SettingsError
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import SqsQueue
from campaign_pipeline.sending.lease import Lease
from campaign_pipeline.sending.pacing import WAKE_SECONDS, Pacer, check_rate, rate_per_step
from campaign_pipeline.sending.shard import BatchQueue, ShardSend
from campaign_pipeline.settings import campaign_max_messages_per_second
from campaign_pipeline.sqs import SqsBatchQueue
from tests.conftest import REGION, drain
from tests.test_campaign_store import add_recipients, add_template_campaign
from tests.test_job import definitions_job, failure_message

LEASE_SECONDS = 60.0
WINDOW_SECONDS = 10.0


class FakeClock:
    """A monotonic clock that only moves when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def fake_pacer(rate: float, **fields: Any) -> tuple[Pacer, FakeClock]:
    clock = FakeClock()
    return Pacer(rate, clock=clock, sleep=clock.sleep, **fields), clock


def window_rates(times: Sequence[float], counts: Sequence[int], skip: float = 1.0) -> list[float]:
    """Messages per second in every 10-second window starting `skip` s after the first send,
    slid by 50 ms (`times` sorted, `counts[i]` messages sent at `times[i]`)."""
    totals = [0]
    for count in counts:
        totals.append(totals[-1] + count)
    rates = []
    start = times[0] + skip
    while start + WINDOW_SECONDS <= times[-1]:
        first = bisect.bisect_left(times, start)
        last = bisect.bisect_left(times, start + WINDOW_SECONDS)
        rates.append((totals[last] - totals[first]) / WINDOW_SECONDS)
        start += 0.05
    return rates


# The bucket, on a fake clock


def test_a_full_bucket_lets_its_burst_through_then_keeps_the_rate() -> None:
    """At 100/s the bucket holds 25 messages: two batches at once, then one every 0.1 s."""
    pacer, clock = fake_pacer(100)
    assert pacer.burst == 25
    started = clock.now
    taken_at = []
    for _ in range(5):
        assert pacer.take(10)
        taken_at.append(round(clock.now - started, 6))
    assert taken_at == [0.0, 0.0, 0.05, 0.15, 0.25]


def test_the_burst_is_a_quarter_second_and_never_less_than_a_batch() -> None:
    """The capacity is 0.25 s of the rate, or ten messages when that is less."""
    assert Pacer(5_000).burst == 1_250
    assert Pacer(50).burst == 12.5
    assert Pacer(4).burst == Pacer(0.1).burst == 10


def test_a_batch_waits_until_it_can_take_all_its_messages() -> None:
    """At 40/s with a bucket of ten, each batch waits for all its messages; none goes in part."""
    pacer, clock = fake_pacer(40)
    started = clock.now
    assert pacer.take(10)
    assert pacer.take(10)
    assert clock.now - started == pytest.approx(0.25)
    assert pacer.take(3)
    assert clock.now - started == pytest.approx(0.325)


def test_more_messages_than_the_bucket_holds_are_refused() -> None:
    """A batch larger than the bucket could never go: an error, not a wait forever."""
    with pytest.raises(ValueError, match="never fit"):
        Pacer(4).take(11)


@pytest.mark.parametrize("rate", [20, 50, 500, 5_000])
def test_every_10_second_window_after_the_first_second_is_within_5_percent(rate: int) -> None:
    """A sender that keeps up stays within 5% of the cap in every 10-s window, either way."""
    pacer, clock = fake_pacer(rate)
    randomness = random.Random(rate)
    times, counts = [], []
    # Batches of 1 to 10, with the loop's own time between them (up to a millisecond).
    while clock.now < 1_000.0 + 40:
        size = randomness.randint(1, 10)
        assert pacer.take(size)
        times.append(clock.now)
        counts.append(size)
        clock.now += randomness.uniform(0, 0.001)
    rates = window_rates(times, counts)
    assert len(rates) > 100
    assert min(rates) >= rate * 0.95
    assert max(rates) <= rate * 1.05


@pytest.mark.parametrize("rate", [50, 500, 5_000])
def test_stalls_never_push_a_window_over_the_cap_by_more_than_5_percent(rate: int) -> None:
    """After stalls of up to 2 s (a chunk read, writes catching up) it catches up by at most a
    quarter of a second: no 10-s window goes more than 5% over, only under."""
    pacer, clock = fake_pacer(rate)
    randomness = random.Random(rate)
    times, counts = [], []
    while clock.now < 1_000.0 + 60:
        assert pacer.take(10)
        times.append(clock.now)
        counts.append(10)
        if randomness.random() < 0.01 * 500 / rate:  # about one stall every two seconds
            clock.now += randomness.uniform(0.1, 2.0)
    rates = window_rates(times, counts)
    assert max(rates) <= rate * 1.05
    assert min(rates) < rate * 0.95  # the stalls did cost something: the test is not vacuous


def test_a_stop_wakes_a_long_wait_within_a_tenth_of_a_second() -> None:
    """At 0.5/s a batch waits 20 s; told to stop 0.3 s in, it gives up at once, taking nothing."""
    pacer, clock = fake_pacer(0.5)
    assert pacer.take(10)
    started = clock.now
    assert not pacer.take(10, keep_going=lambda: clock.now - started < 0.3)
    assert clock.now - started <= 0.3 + WAKE_SECONDS
    assert max(clock.sleeps) <= WAKE_SECONDS
    # Nothing was taken: the tokens gathered meanwhile are still there.
    assert pacer._tokens == pytest.approx((clock.now - started) * 0.5)


def test_a_stop_from_another_thread_ends_a_real_wait() -> None:
    """In real time: a wait of 100 s ends within a moment of an event set from elsewhere."""
    pacer = Pacer(0.1)
    assert pacer.take(10)
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    assert not pacer.take(10, keep_going=lambda: not stop.is_set())
    assert time.monotonic() - started < 0.2 + WAKE_SECONDS + 0.3


def test_rates_must_be_positive_numbers() -> None:
    """Zero, negative, infinite and NaN caps are refused with the name of the setting."""
    assert check_rate(2.5, "x") == 2.5
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=r"^x must be a positive number"):
            check_rate(bad, "x")


@pytest.mark.parametrize(
    ("raw", "expected"), [("", None), ("  ", None), ("40", 40.0), (" 2.5 ", 2.5), ("1e3", 1000.0)]
)
def test_the_variable_is_a_positive_number_or_unset(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: float | None
) -> None:
    """CAMPAIGN_MAX_MESSAGES_PER_SECOND: blank is no cap, any positive number a cap."""
    monkeypatch.setenv("CAMPAIGN_MAX_MESSAGES_PER_SECOND", raw)
    assert campaign_max_messages_per_second() == expected


@pytest.mark.parametrize("raw", ["fast", "0", "-3", "inf", "nan"])
def test_a_bad_variable_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    """Anything but a positive number is a SettingsError of one line, naming the variable."""
    monkeypatch.setenv("CAMPAIGN_MAX_MESSAGES_PER_SECOND", raw)
    with pytest.raises(SettingsError) as error:
        campaign_max_messages_per_second()
    assert str(error.value).startswith("CAMPAIGN_MAX_MESSAGES_PER_SECOND must be")
    assert repr(raw) in str(error.value) and "\n" not in str(error.value)


# Sharing the cap among send steps


def test_a_cap_is_shared_equally_by_the_steps_sending_at_once() -> None:
    """Each step gets the cap divided by the steps that can send together; no cap stays none."""
    assert rate_per_step(500.0, 2) == 250.0
    assert rate_per_step(500.0, 1) == 500.0
    assert rate_per_step(None, 4) is None


@pytest.mark.parametrize(
    ("execution", "shards", "expected"),
    [
        ({"in_process": {}}, 5, 1),
        ({"multiprocess": {"max_concurrent": 2}}, 5, 2),
        ({"multiprocess": {"max_concurrent": 8}}, 3, 3),
        ({"multiprocess": {"max_concurrent": 2}}, 1, 1),
        ({"multiprocess": {"max_concurrent": 0}}, 64, None),  # Dagster: 0 means the CPUs
        ({"max_concurrent": 4, "job_namespace": "campaigns"}, 10, 4),  # k8s_job_executor
        ({"job_namespace": "campaigns"}, 10, 10),  # no limit: every shard at once
    ],
)
def test_steps_at_once_follow_the_runs_executor(
    execution: dict, shards: int, expected: int | None
) -> None:
    """In-process runs one step at a time; multiprocess its max_concurrent, never above shards."""
    run_config = {"execution": {"config": execution}}
    assert send_steps_at_once(run_config, shards) == (expected or min(shards, os.cpu_count()))


def test_a_run_without_an_execution_block_counts_dagsters_default() -> None:
    """No execution block means the job's default, multiprocess on every CPU: assume that."""
    assert send_steps_at_once({}, 64) == os.cpu_count()
    assert send_steps_at_once({"ops": {}}, 1) == 1


# A capped send in real time, against moto and PostgreSQL


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
def timed_queue(moto_endpoint: str, make_queue: Callable[..., str]) -> TimedQueue:
    resource = SqsQueue(
        queue_url=make_queue(fifo=False), region_name=REGION, endpoint_url=moto_endpoint
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


# Where the cap comes from, and the share each send step gets (the job)


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
    moto_endpoint: str,
    sqs_client: object,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two shards in two processes at 80 messages/s: each sends at 40, together at most 80."""
    campaign_id = add_template_campaign(postgres_store, max_messages_per_second=80.0)
    add_recipients(postgres_store, campaign_id, 400)
    queue_url = make_queue(fifo=False)
    monkeypatch.setenv("CAMPAIGN_DATABASE_URL", postgres_url)
    monkeypatch.setenv("AWS_SQS_QUEUE_URL", queue_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", moto_endpoint)
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent.parent))
    run_config = campaign_run_config(campaign_id, processes=2, recipients_per_shard=200)
    # Spawned, not forked from a fork server: the server outlives the test with this test's
    # environment (its queue), which the next multiprocess test's steps would inherit.
    run_config["execution"]["config"]["multiprocess"]["start_method"] = {"spawn": {}}
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = dg.execute_job(
            dg.reconstructable(definitions_job), instance=instance, run_config=run_config
        )
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
