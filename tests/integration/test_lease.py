"""The run's lease while it sends: renewed on a timer, and sending stops when it cannot be.

Against PostgreSQL and moto's server behind a slow proxy, with leases of a second or two so a
send outlives several of them.
"""

import gc
import threading
import time
from collections.abc import Callable

import pytest
from sqlalchemy.engine import make_url

from campaign_pipeline.errors import CampaignBusy, SendInterrupted
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import SqsQueue
from campaign_pipeline.sending.stats import SendStats
from campaign_pipeline.store.claims import Claims
from tests.conftest import drain, send_shard
from tests.support.campaigns import add_recipients, add_template_campaign
from tests.support.fault_proxy import Call, FaultProxy
from tests.support.invariant import check_campaign_invariant
from tests.support.tcp_proxy import TcpProxy

LEASE_SECONDS = 1.5


def send(store: CampaignStore, queue: SqsQueue, campaign_id: str, run_id: str) -> SendStats:
    """Everything pending, outcomes written only at the end, so only the timer renews the lease."""
    claim = store.claims.claim(campaign_id, run_id, LEASE_SECONDS)
    return send_shard(
        store,
        queue,
        claim.message,
        run_id,
        lease_seconds=LEASE_SECONDS,
        recipients_per_chunk=10_000,
        outcomes_per_write=10_000,
    )


def test_a_slow_send_keeps_its_lease_past_its_length(
    postgres_store: CampaignStore,
    sqs_endpoint: str,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: object,
) -> None:
    """A send three leases long keeps the campaign: another run is refused all along."""
    campaign_id = add_template_campaign(postgres_store)
    add_recipients(postgres_store, campaign_id, 80)
    with FaultProxy(sqs_endpoint, delay_seconds=0.5) as slow:
        queue = make_sqs_queue(fifo=False, endpoint=slow.url, max_concurrent_batches=1)
        sender = threading.Thread(
            target=send, args=(postgres_store, queue, campaign_id, "slow-run")
        )
        sender.start()
        refusals = 0
        # Eight batches at 0.5 s each: about 4 s, nearly three leases.
        while sender.is_alive():
            time.sleep(LEASE_SECONDS / 2)
            if sender.is_alive():
                with pytest.raises(CampaignBusy):
                    postgres_store.claims.claim(campaign_id, "other-run", LEASE_SECONDS)
                refusals += 1
        sender.join()
    assert refusals >= 3
    assert postgres_store.audience.counts(campaign_id)["ready_to_send"] == 80
    assert len(drain(sqs_client, queue.queue_url)) == 80


def test_sending_stops_when_the_lease_cannot_be_renewed(
    postgres_store: CampaignStore,
    sqs_endpoint: str,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The database gone for the renewals: no batch starts once the lease could have run out."""
    campaign_id = add_template_campaign(postgres_store)
    add_recipients(postgres_store, campaign_id, 200)
    renewals = 0
    renewed_at = 0.0
    renew = postgres_store.claims.renew

    def renew_once_then_fail(*args: object) -> bool:
        nonlocal renewals, renewed_at
        renewals += 1
        if renewals > 1:
            raise ConnectionError("the database does not answer")
        renewed = renew(*args)  # type: ignore[arg-type]
        renewed_at = time.monotonic()
        return renewed

    batches_started: list[float] = []

    def hook(call: Call, stage: str) -> None:
        if call.action == "SendMessageBatch" and stage == "received":
            batches_started.append(time.monotonic())

    monkeypatch.setattr(Claims, "renew", lambda self, *a: renew_once_then_fail(*a))
    with FaultProxy(sqs_endpoint, delay_seconds=0.3, hook=hook) as slow:
        queue = make_sqs_queue(fifo=False, endpoint=slow.url, max_concurrent_batches=1)
        with pytest.raises(SendInterrupted, match="no longer holds campaign"):
            send(postgres_store, queue, campaign_id, "cut-off-run")
    # Twenty batches would take 6 s. The run stops once two thirds of a lease pass without a
    # renewal; whatever the machine's load, no batch may start after the lease could have
    # expired and another run taken the campaign. (Timed from the run's start, the bound once
    # failed by 14 ms on a loaded machine: the claim and the first payloads were in it.)
    assert renewals >= 2 and renewed_at > 0
    assert max(batches_started) - renewed_at < LEASE_SECONDS
    counts = postgres_store.audience.counts(campaign_id)
    queued = len(drain(sqs_client, queue.queue_url))
    # What was sent is recorded; the rest stays pending for the next run.
    assert counts["ready_to_send"] == queued < 200
    assert counts["pending"] == 200 - queued


def test_a_lease_taken_over_stops_the_send_at_the_next_renewal(
    postgres_store: CampaignStore,
    sqs_endpoint: str,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: object,
) -> None:
    """Another run took the campaign (an operator, a takeover): this one stops sending."""
    campaign_id = add_template_campaign(postgres_store)
    add_recipients(postgres_store, campaign_id, 200)
    first_stored = threading.Event()

    def hook(call: Call, stage: str) -> None:
        if call.action == "SendMessageBatch" and stage == "forwarded":
            first_stored.set()

    def steal() -> None:
        # Once something is in the queue, however slowly a loaded machine got there.
        first_stored.wait(30)
        postgres_store.claims.claim(campaign_id, "thief-run", 60, take_over_from="first-run")

    with FaultProxy(sqs_endpoint, delay_seconds=0.3, hook=hook) as slow:
        queue = make_sqs_queue(fifo=False, endpoint=slow.url, max_concurrent_batches=1)
        thief = threading.Thread(target=steal)
        thief.start()
        with pytest.raises(SendInterrupted, match="no longer holds campaign"):
            send(postgres_store, queue, campaign_id, "first-run")
        thief.join()
    queued = len(drain(sqs_client, queue.queue_url))
    assert 0 < queued < 200
    assert postgres_store.campaigns.get(campaign_id)["lease_run_id"] == "thief-run"


def test_an_outcome_write_that_finds_the_lease_taken_stops_the_send(
    postgres_store: CampaignStore,
    sqs_endpoint: str,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A long lease, so the keeper never renews during the send: the outcome write, which
    extends the lease only for its holder, is what reports the takeover."""
    campaign_id = add_template_campaign(postgres_store)
    add_recipients(postgres_store, campaign_id, 200)
    renewals: list[object] = []
    renew = Claims.renew
    monkeypatch.setattr(Claims, "renew", lambda self, *a: renewals.append(a) or renew(self, *a))
    first_stored = threading.Event()

    def hook(call: Call, stage: str) -> None:
        if call.action == "SendMessageBatch" and stage == "forwarded":
            first_stored.set()

    def steal() -> None:
        first_stored.wait(30)
        postgres_store.claims.claim(campaign_id, "thief-run", 60, take_over_from="first-run")

    claim = postgres_store.claims.claim(campaign_id, "first-run", 60)
    with FaultProxy(sqs_endpoint, delay_seconds=0.3, hook=hook) as slow:
        queue = make_sqs_queue(fifo=False, endpoint=slow.url, max_concurrent_batches=1)
        thief = threading.Thread(target=steal)
        thief.start()
        with pytest.raises(SendInterrupted, match="no longer holds campaign"):
            send_shard(
                postgres_store,
                queue,
                claim.message,
                "first-run",
                recipients_per_chunk=10_000,
                outcomes_per_write=10,
            )
        thief.join()
    assert len(renewals) == 1  # on entry, before the takeover; the timer is 20 s away
    queued = len(drain(sqs_client, queue.queue_url))
    assert 0 < queued < 200
    assert postgres_store.campaigns.get(campaign_id)["lease_run_id"] == "thief-run"


# Connections the cut broke mid-handshake can be left to the garbage collector, whose psycopg
# ResourceWarning would otherwise land in whichever later test collects them.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_real_database_outage_mid_send_stops_it_and_a_rerun_finishes_once(
    postgres_url: str,
    sqs_endpoint: str,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: object,
) -> None:
    """PostgreSQL's connections cut (not a patched method) while batches are in flight."""
    recipients = 400
    database = make_url(postgres_url)
    with TcpProxy(database.host or "127.0.0.1", database.port or 5432) as link:
        url = database.set(host="127.0.0.1", port=link.port).render_as_string(hide_password=False)
        store = CampaignStore(database_url=url)
        campaign_id = add_template_campaign(store)
        add_recipients(store, campaign_id, recipients)
        cut = threading.Event()

        def hook(call: Call, stage: str) -> None:
            if call.action == "SendMessageBatch" and stage == "forwarded" and not cut.is_set():
                cut.set()
                link.cut()

        with FaultProxy(sqs_endpoint, delay_seconds=0.3, hook=hook) as slow:
            queue = make_sqs_queue(fifo=True, endpoint=slow.url, max_concurrent_batches=1)
            with pytest.raises(SendInterrupted, match="the campaign store failed to record"):
                send(store, queue, campaign_id, "cut-off-run")
            batches_before_the_stop = slow.calls["SendMessageBatch"]
            assert link.refused > 0  # the renewals did try, and found no database
            link.restore()
            time.sleep(LEASE_SECONDS)  # the cut-off run's lease runs out
            slow.delay_seconds = 0  # the rerun only has to finish
            send(store, queue, campaign_id, "rerun")
        # It stopped soon after the cut (within a lease's two thirds, plus a loaded machine's
        # slack), not after the forty batches at 0.3 s each.
        assert batches_before_the_stop < recipients // 10 // 2
        report = check_campaign_invariant(
            store, campaign_id, sqs_client, queue.queue_url, fifo=True
        )
        assert report.queued == recipients
        store.engine.dispose()
    gc.collect()
