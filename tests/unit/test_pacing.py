"""The rate cap without a clock or a server: the token bucket on a fake clock, the cap's bad
values in one line, and how it is shared among the send steps an executor runs at once.

The capped send in real time and the cap through the job are in
`tests/integration/test_rate_cap.py`.
"""

import bisect
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from campaign_pipeline.defs.executor import send_steps_at_once
from campaign_pipeline.errors import SettingsError
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.sending.lease import Lease
from campaign_pipeline.sending.pacing import WAKE_SECONDS, Pacer, check_rate, rate_per_step
from campaign_pipeline.sending.shard import BatchQueue, ShardSend
from campaign_pipeline.settings import campaign_max_messages_per_second

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
    # Waking every WAKE_SECONDS, it ends within one wake of the event; the slack is for a
    # loaded machine's scheduling, still far short of the 100 s it would otherwise wait.
    assert time.monotonic() - started < 0.2 + WAKE_SECONDS + 2.0


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
