"""Stopping a send: a pause or cancel of the campaign, or the caller's StopSignal, mid-flight.

`ShardSend` runs against moto's SQS server over HTTP (FIFO queues, so each
recipient is in the queue once) and the campaign store on SQLite and PostgreSQL, with batches
slowed so a send lasts a few seconds. Then the whole job (`execute_in_process`, PostgreSQL)
with the campaign paused mid-run and before the run, and the send op's interrupt path.
Every scenario ends with `check_campaign_invariant`: what is ready_to_send is in the queue once,
what is pending is not, and the campaign's live counts match its recipients.
"""

import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dagster as dg
import pytest
from dagster._core.errors import raise_execution_interrupts

from campaign_pipeline.defs.jobs import process_campaign_messages
from campaign_pipeline.defs.ops import CampaignConfig
from campaign_pipeline.defs.ops.process_campaign import INTERRUPTS
from campaign_pipeline.defs.tags import STOPPED_TAG
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import SqsQueue
from campaign_pipeline.sending.lease import Lease
from campaign_pipeline.sending.shard import BatchQueue, ShardSend
from campaign_pipeline.sending.stats import SendStats
from campaign_pipeline.sending.stop import StopSignal
from campaign_pipeline.sqs import SqsBatchQueue
from tests.conftest import REGION
from tests.support.campaigns import add_recipients, add_template_campaign
from tests.support.fault_proxy import Call, FaultProxy
from tests.support.invariant import InvariantReport, check_campaign_invariant, drain_queue
from tests.support.reliability_log import log_scenario

ACTOR = "alice@ops-host (cli)"
RECIPIENTS = 600
# Several calls in flight, each at least BATCH_SECONDS: 60 batches take seconds, so a stop
# noticed within about a second (the status poll) leaves most recipients pending.
BATCH_SECONDS = 0.03
CALLS_IN_FLIGHT = 4
STOP_AFTER_BATCHES = 5
# A pause is noticed within STATUS_POLL_SECONDS (1 s) plus the batches in flight; slack for a
# loaded machine.
STOPS_WITHIN_SECONDS = 3.0
LEASE_SECONDS = 60.0
# Longer than the status poll (1 s): calls held this long land after the send noticed a pause.
HELD_SECONDS = 1.5


class SlowClient:
    """A boto3 SQS client whose SendMessageBatch calls each take BATCH_SECONDS longer, counted.

    Once STOP_AFTER_BATCHES calls are answered, later calls wait at a gate until `open_gate`:
    a test stops the send while they are in flight, then lets them land.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls = 0
        self.started = 0
        self._lock = threading.Lock()
        self._reached = threading.Event()
        self._gate = threading.Event()

    def get_queue_attributes(self, **arguments: Any) -> Any:
        return self.client.get_queue_attributes(**arguments)

    def send_message_batch(self, **arguments: Any) -> Any:
        with self._lock:
            self.started += 1
        if self._reached.is_set():
            assert self._gate.wait(30), "the gate was never opened"
        time.sleep(BATCH_SECONDS)
        response = self.client.send_message_batch(**arguments)
        with self._lock:
            self.calls += 1
            if self.calls >= STOP_AFTER_BATCHES:
                self._reached.set()
        return response


class SlowQueue(SqsBatchQueue):
    """The real batch queue over a `SlowClient`, CALLS_IN_FLIGHT calls at once."""

    client: SlowClient

    @property
    def batches_sent(self) -> int:
        return self.client.calls

    def wait_for_batches(self, timeout: float = 30.0) -> int:
        """Block until STOP_AFTER_BATCHES batches are answered and one more is held in flight.

        Returns how many calls are in flight (held at the gate).
        """
        assert self.client._reached.wait(timeout), f"only {self.batches_sent} batches sent"
        deadline = time.monotonic() + timeout
        while (in_flight := self.client.started - self.client.calls) < 1:
            assert time.monotonic() < deadline, "no call in flight at the gate"
            time.sleep(0.005)
        return in_flight

    def open_gate(self) -> None:
        """Let the calls held in flight go on to SQS."""
        self.client._gate.set()


def wait_until_noticed(stop: StopSignal, timeout: float = 10.0) -> None:
    """Block until the send has noticed its stop (then open the gate: calls land after it)."""
    deadline = time.monotonic() + timeout
    while stop.reason is None:
        assert time.monotonic() < deadline, "the send never noticed the stop"
        time.sleep(0.005)


@pytest.fixture
def slow_queue(sqs_endpoint: str, make_queue: Callable[..., str]) -> Iterator[SlowQueue]:
    resource = SqsQueue(
        queue_url=make_queue(fifo=True), region_name=REGION, endpoint_url=sqs_endpoint
    )
    queue = SlowQueue(SlowClient(resource.client), resource.queue_url, concurrency=CALLS_IN_FLIGHT)
    yield queue
    queue.open_gate()


def claimed_campaign(store: CampaignStore, run_id: str = "run-1") -> tuple[str, Any]:
    """A template campaign of RECIPIENTS pending recipients, claimed by `run_id`."""
    campaign_id = add_template_campaign(store)
    add_recipients(store, campaign_id, RECIPIENTS)
    return campaign_id, store.claims.claim(campaign_id, run_id, LEASE_SECONDS).message


def shard_send(store: CampaignStore, queue: BatchQueue, message: Any) -> ShardSend:
    lease = Lease(store.claims, message.campaign_id, "run-1", LEASE_SECONDS)
    return ShardSend(
        message,
        lease,
        store.audience,
        queue,
        store.suppressions,
        recipients_per_chunk=100,
        outcomes_per_write=10,
    )


def send(
    store: CampaignStore, queue: BatchQueue, message: Any, stop: StopSignal | None = None
) -> SendStats:
    return shard_send(store, queue, message).run(stop)


def assert_counts_match_recipients(store: CampaignStore, campaign_id: str) -> dict[str, int]:
    """The campaign's queued, failed and pending counts are its recipients' (live counts)."""
    counts = store.audience.counts(campaign_id)
    campaign = store.campaigns.get(campaign_id)
    assert campaign is not None
    assert (campaign["queued_count"], campaign["failed_count"], campaign["pending_count"]) == (
        counts["ready_to_send"],
        counts["failed"],
        counts["pending"],
    )
    return counts


def assert_stopped_cleanly(
    store: CampaignStore, campaign_id: str, sqs_client: object, queue_url: str
) -> InvariantReport:
    """Ready_to_send ones are in the queue once, pending ones not at all; counts match."""
    report = check_campaign_invariant(
        store, campaign_id, sqs_client, queue_url, fifo=True, expect_pending_allowed=True
    )
    # The batches in flight when it stopped were answered and recorded.
    assert report.pending_in_queue == []
    assert report.failed == 0
    assert report.queued + report.pending == RECIPIENTS
    assert_counts_match_recipients(store, campaign_id)
    return report


# ShardSend, on both databases


@pytest.mark.parametrize("how", ["pause", "cancel", "signal"])
def test_a_stop_while_sending_ends_the_send_soon_and_cleanly(
    store: CampaignStore, slow_queue: SlowQueue, sqs_client: object, how: str
) -> None:
    """Paused, cancelled or signalled mid-send: it returns soon, all recorded, the rest pending."""
    campaign_id, message = claimed_campaign(store)
    stop = StopSignal()
    with ThreadPoolExecutor(1) as runner:
        sending = runner.submit(lambda: (send(store, slow_queue, message, stop), time.monotonic()))
        in_flight = slow_queue.wait_for_batches()
        if how == "signal":
            stop.stop("terminated")
        else:
            store.control.apply(campaign_id, how, ACTOR)  # type: ignore[arg-type]
        stopped_at = time.monotonic()
        wait_until_noticed(stop)
        # The calls in flight land after the send noticed the stop: they must be recorded.
        slow_queue.open_gate()
        stats, returned_at = sending.result(timeout=30)
    assert in_flight >= 1
    assert returned_at - stopped_at < STOPS_WITHIN_SECONDS
    expected = {"pause": "paused", "cancel": "cancelled", "signal": "terminated"}[how]
    assert stats.stopped == expected
    report = assert_stopped_cleanly(store, campaign_id, sqs_client, slow_queue.queue_url)
    assert report.pending > 0
    assert report.queued == stats.queued == slow_queue.batches_sent * 10
    campaign = store.campaigns.get(campaign_id)
    assert campaign["status"] == {"pause": "paused", "cancel": "cancelled"}.get(
        how, "ready_to_launch"
    )
    # Nothing but the caller releases the lease: complete_campaign does, after the send steps.
    assert campaign["lease_run_id"] == "run-1"
    injected = {
        "pause": "`pause` from another connection",
        "cancel": "`cancel` from another connection",
        "signal": "the stop signal (as Terminate sets it)",
    }[how]
    log_scenario(
        f"{how} while sending",
        group="operator stops",
        fifo=True,
        store=store,
        injected=f"{injected} after {STOP_AFTER_BATCHES} of {RECIPIENTS // 10} batches, "
        f"{in_flight} calls held in flight until the send noticed it",
        proxy=None,
        report=report,
        runs=[f"stopped ({stats.stopped}) {returned_at - stopped_at:.1f} s after the command"],
    )


@pytest.mark.parametrize("command", ["pause", "cancel"])
def test_a_stop_before_the_send_sends_nothing(
    store: CampaignStore, slow_queue: SlowQueue, sqs_client: object, command: str
) -> None:
    """A campaign paused or cancelled after its claim, before sending: no batch, all pending."""
    campaign_id, message = claimed_campaign(store)
    store.control.apply(campaign_id, command, ACTOR)  # type: ignore[arg-type]
    stats = send(store, slow_queue, message)
    assert stats.stopped == ("paused" if command == "pause" else "cancelled")
    assert (stats.recipients, stats.queued, stats.failed, stats.batches) == (0, 0, 0, 0)
    assert slow_queue.batches_sent == 0
    report = assert_stopped_cleanly(store, campaign_id, sqs_client, slow_queue.queue_url)
    assert (report.pending, report.messages) == (RECIPIENTS, [])


def test_an_unstopped_send_finishes(
    postgres_store: CampaignStore, slow_queue: SlowQueue, sqs_client: object
) -> None:
    """Without a stop, the slowed queue sends everyone: the stop tests above are not vacuous."""
    store = postgres_store
    campaign_id = add_template_campaign(store)
    add_recipients(store, campaign_id, 40)
    message = store.claims.claim(campaign_id, "run-1", LEASE_SECONDS).message
    stats = send(store, slow_queue, message)
    assert (stats.stopped, stats.queued) == (None, 40)
    report = check_campaign_invariant(
        store, campaign_id, sqs_client, slow_queue.queue_url, fifo=True
    )
    assert report.queued == 40
    assert assert_counts_match_recipients(store, campaign_id)["pending"] == 0


def test_an_interrupt_of_the_send_op_lets_the_batches_in_flight_land(
    postgres_store: CampaignStore, slow_queue: SlowQueue, sqs_client: object
) -> None:
    """Terminate's SIGINT during the op stops the send, lets batches land, then is raised."""
    store = postgres_store
    campaign_id, message = claimed_campaign(store)
    stop = StopSignal()
    main = threading.main_thread().ident
    assert main is not None and threading.get_ident() == main

    in_flight: list[int] = []

    def interrupt_after_some_batches() -> None:
        in_flight.append(slow_queue.wait_for_batches())
        signal.pthread_kill(main, signal.SIGINT)
        wait_until_noticed(stop)
        slow_queue.open_gate()

    interrupter = threading.Thread(target=interrupt_after_some_batches)
    started = time.monotonic()
    # As Dagster runs an op's body: SIGINT raises DagsterExecutionInterruptedError.
    with pytest.raises(dg.DagsterExecutionInterruptedError), raise_execution_interrupts():
        interrupter.start()
        shard_send(store, slow_queue, message).run(stop, interrupts=INTERRUPTS)
    interrupter.join()
    assert time.monotonic() - started < 10
    assert stop.reason == "terminated"
    assert in_flight[0] >= 1
    assert slow_queue.batches_sent < RECIPIENTS // 10
    report = assert_stopped_cleanly(store, campaign_id, sqs_client, slow_queue.queue_url)
    assert report.pending > 0
    log_scenario(
        "Terminate's SIGINT during the send op",
        group="operator stops",
        fifo=True,
        store=store,
        injected=f"SIGINT to the op's main thread after {STOP_AFTER_BATCHES} batches",
        proxy=None,
        report=report,
        runs=["interrupted; the batches in flight recorded, then the interrupt raised"],
    )


# The job, on PostgreSQL


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def run_job(
    store: CampaignStore, queue: SqsQueue, campaign_id: str, instance: dg.DagsterInstance
) -> dg.ExecuteInProcessResult:
    return process_campaign_messages.execute_in_process(
        run_config=dg.RunConfig(
            ops={
                "claim_campaign": CampaignConfig(
                    campaign_id=campaign_id, recipients_per_chunk=100, outcomes_per_write=10
                )
            }
        ),
        resources={"campaign_store": store, "sqs_queue": queue},
        instance=instance,
        raise_on_error=False,
    )


def step_events(result: dg.ExecuteInProcessResult, event_type: dg.DagsterEventType) -> dict:
    return {
        event.step_key: event for event in result.all_node_events if event.event_type == event_type
    }


def test_a_run_paused_mid_send_succeeds_and_says_who_stopped_it(
    postgres_store: CampaignStore,
    sqs_endpoint: str,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: object,
    instance: dg.DagsterInstance,
) -> None:
    """Paused mid-run: the run succeeds, names who paused it, and the rest stays pending."""
    store = postgres_store
    campaign_id = add_template_campaign(store)
    add_recipients(store, campaign_id, RECIPIENTS)

    def pause_at_the_fifth_batch(call: Call, stage: str) -> None:
        if (call.action, stage) != ("SendMessageBatch", "received"):
            return
        if call.number == STOP_AFTER_BATCHES:
            store.control.apply(campaign_id, "pause", ACTOR)
        if call.number >= STOP_AFTER_BATCHES:
            # Held in flight past the next status poll: they land after the pause is noticed.
            time.sleep(HELD_SECONDS)

    with FaultProxy(
        sqs_endpoint, delay_seconds=BATCH_SECONDS, hook=pause_at_the_fifth_batch
    ) as proxy:
        queue = make_sqs_queue(
            fifo=True, endpoint=proxy.url, max_concurrent_batches=CALLS_IN_FLIGHT
        )
        started = time.monotonic()
        result = run_job(store, queue, campaign_id, instance)
        elapsed = time.monotonic() - started
    assert result.success
    # Sixty batches at BATCH_SECONDS or more each would take longer, had it not stopped.
    assert proxy.calls["SendMessageBatch"] < RECIPIENTS // 10
    assert elapsed < 30
    output = step_events(result, dg.DagsterEventType.STEP_OUTPUT)
    stopped = output["complete_campaign"].event_specific_data.metadata["stopped"].value
    assert stopped.startswith(f"paused by {ACTOR} at ")
    assert "recipients stay pending" in stopped
    assert instance.get_run_by_id(result.run_id).tags[STOPPED_TAG] == stopped
    counts = result.output_for_node("complete_campaign")
    assert counts["pending"] > 0 and counts["ready_to_send"] > 0
    assert f"; {counts['pending']} recipients stay pending" in stopped
    campaign = store.campaigns.get(campaign_id)
    assert (campaign["status"], campaign["paused_by"], campaign["lease_run_id"]) == (
        "paused",
        ACTOR,
        None,
    )
    report = assert_stopped_cleanly(store, campaign_id, sqs_client, queue.queue_url)
    log_scenario(
        "a run paused mid-send",
        group="operator stops",
        fifo=True,
        store=store,
        injected=f"`pause` while SendMessageBatch call {STOP_AFTER_BATCHES} is in flight, it and "
        f"the calls after it held {HELD_SECONDS} s",
        proxy=proxy,
        report=report,
        runs=[f"succeeded: {stopped}"],
    )


def test_a_run_of_a_paused_campaign_succeeds_and_sends_nothing(
    postgres_store: CampaignStore,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: object,
    instance: dg.DagsterInstance,
) -> None:
    """Paused before the run: the claim yields nothing, later steps are skipped, nothing sent."""
    store = postgres_store
    campaign_id = add_template_campaign(store)
    add_recipients(store, campaign_id, 20)
    store.control.apply(campaign_id, "pause", ACTOR)
    version = store.campaigns.get(campaign_id)["version"]
    queue = make_sqs_queue(fifo=True)
    result = run_job(store, queue, campaign_id, instance)
    assert result.success
    assert "claim_campaign" not in step_events(result, dg.DagsterEventType.STEP_OUTPUT)
    skipped = step_events(result, dg.DagsterEventType.STEP_SKIPPED)
    assert {"plan_shards", "complete_campaign"} <= set(skipped)
    assert not [
        key
        for key in step_events(result, dg.DagsterEventType.STEP_SUCCESS)
        if key != "claim_campaign"
    ]
    tag = instance.get_run_by_id(result.run_id).tags[STOPPED_TAG]
    assert f"campaign {campaign_id} is paused (by {ACTOR} at " in tag
    assert drain_queue(sqs_client, queue.queue_url) == []
    campaign = store.campaigns.get(campaign_id)
    assert (campaign["status"], campaign["version"], campaign["lease_run_id"]) == (
        "paused",
        version,
        None,
    )
    assert store.audience.counts(campaign_id)["pending"] == 20
