"""The send loop with fakes: `ShardSend` and the real `SqsBatchQueue` over an in-memory SQS
client, on a SQLite store.

The fake client answers SendMessageBatch as SQS does (a message id per accepted entry, `Failed`
entries, errors) and can hold calls in flight at a gate, so a stop can be noticed while calls
are outstanding: their outcomes must still be recorded.
"""

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from botocore.exceptions import ClientError

from campaign_pipeline.errors import SendInterrupted
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.sending.lease import Lease
from campaign_pipeline.sending.shard import ShardSend
from campaign_pipeline.sending.stats import SendStats
from campaign_pipeline.sending.stop import StopSignal
from campaign_pipeline.sqs import SqsBatchQueue
from campaign_pipeline.store.schema import campaign_audience
from tests.support.campaigns import add_recipients, add_template_campaign

QUEUE_URL = "http://sqs.invalid/123456789012/campaigns.fifo"
CALLS_IN_FLIGHT = 4


class FakeSqsClient:
    """SendMessageBatch in memory: every accepted entry is stored with a new message id.

    `hold_after` calls are answered normally; later ones wait at `gate` until it opens.
    `fail_call` makes that call (1-based) raise a non-retryable error. `refuse` names entry
    ids SQS rejects for good.
    """

    def __init__(
        self,
        hold_after: int | None = None,
        fail_call: int | None = None,
        refuse: frozenset[str] = frozenset(),
    ) -> None:
        self.stored: dict[str, str] = {}
        self.calls = 0
        self.answered = 0
        self.hold_after = hold_after
        self.fail_call = fail_call
        self.refuse = refuse
        self.gate = threading.Event()
        self._lock = threading.Lock()

    def get_queue_attributes(self, **arguments: Any) -> dict[str, Any]:
        return {"Attributes": {"MaximumMessageSize": "262144"}}

    def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, str]]) -> dict:
        with self._lock:
            self.calls += 1
            number = self.calls
        if self.hold_after is not None and number > self.hold_after:
            assert self.gate.wait(10), "the gate was never opened"
        if number == self.fail_call:
            raise ClientError(
                {"Error": {"Code": "AccessDenied", "Message": "denied"}}, "SendMessageBatch"
            )
        successful, failed = [], []
        with self._lock:
            for entry in Entries:
                if entry["Id"] in self.refuse:
                    failed.append(
                        {
                            "Id": entry["Id"],
                            "SenderFault": True,
                            "Code": "InvalidParameterValue",
                            "Message": "refused",
                        }
                    )
                    continue
                message_id = str(uuid.uuid4())
                self.stored[entry["Id"]] = message_id
                successful.append({"Id": entry["Id"], "MessageId": message_id})
            self.answered += 1
        return {"Successful": successful, "Failed": failed}

    @property
    def in_flight(self) -> int:
        return self.calls - self.answered


@pytest.fixture
def store(tmp_path: Path) -> CampaignStore:
    store = CampaignStore(database_url=f"sqlite:///{tmp_path / 'campaigns.db'}")
    store.create_schema()
    return store


def shard_send(
    store: CampaignStore, client: FakeSqsClient, recipients: int
) -> tuple[str, ShardSend]:
    campaign_id = add_template_campaign(store)
    add_recipients(store, campaign_id, recipients)
    message = store.claims.claim(campaign_id, "run-1", 60).message
    queue = SqsBatchQueue(client, QUEUE_URL, concurrency=CALLS_IN_FLIGHT)
    lease = Lease(store.claims, campaign_id, "run-1", 60)
    send = ShardSend(
        message, lease, store.audience, queue, recipients_per_chunk=50, outcomes_per_write=10
    )
    return campaign_id, send


def recorded(store: CampaignStore, campaign_id: str) -> dict[str, tuple[str, str | None]]:
    """Each recipient's (status, sqs_message_id)."""
    with store.engine.connect() as connection:
        return {
            row.id: (row.status, row.sqs_message_id)
            for row in connection.execute(
                sa.select(
                    campaign_audience.c.id,
                    campaign_audience.c.status,
                    campaign_audience.c.sqs_message_id,
                ).where(campaign_audience.c.campaign_id == campaign_id)
            )
        }


def assert_recorded_as_stored(
    store: CampaignStore, campaign_id: str, client: FakeSqsClient
) -> dict[str, tuple[str, str | None]]:
    """Every stored message is its recipient's recorded outcome, and nothing else is queued."""
    rows = recorded(store, campaign_id)
    queued = {
        id_: message_id for id_, (status, message_id) in rows.items() if status == "ready_to_send"
    }
    assert queued == client.stored
    return rows


def run_in_thread(send: ShardSend, stop: StopSignal) -> Callable[[], SendStats]:
    results: list[SendStats] = []
    thread = threading.Thread(target=lambda: results.append(send.run(stop)))
    thread.start()

    def result() -> SendStats:
        thread.join(10)
        assert not thread.is_alive(), "the send did not end"
        return results[0]

    return result


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.002)


def test_every_recipient_is_queued_once_with_its_message_id(store: CampaignStore) -> None:
    client = FakeSqsClient()
    campaign_id, send = shard_send(store, client, 235)
    stats = send.run()
    assert (stats.recipients, stats.queued, stats.failed, stats.stopped) == (235, 235, 0, None)
    assert stats.batches == 24
    rows = assert_recorded_as_stored(store, campaign_id, client)
    assert len(client.stored) == 235 and len(rows) == 235


def test_a_stop_with_calls_in_flight_records_what_they_queued(store: CampaignStore) -> None:
    """Calls answered after the send noticed the stop are recorded: none left pending in SQS."""
    client = FakeSqsClient(hold_after=5)
    campaign_id, send = shard_send(store, client, 300)
    stop = StopSignal()
    result = run_in_thread(send, stop)
    wait_for(lambda: client.in_flight >= CALLS_IN_FLIGHT, "calls held in flight")
    stop.stop("terminated")
    client.gate.set()
    stats = result()
    assert stats.stopped == "terminated"
    assert stats.queued == len(client.stored) == (5 + CALLS_IN_FLIGHT) * 10
    rows = assert_recorded_as_stored(store, campaign_id, client)
    assert sum(status == "pending" for status, _ in rows.values()) == 300 - stats.queued


def test_a_call_failing_past_its_retries_interrupts_the_send_keeping_what_was_queued(
    store: CampaignStore,
) -> None:
    client = FakeSqsClient(fail_call=3)
    campaign_id, send = shard_send(store, client, 200)
    with pytest.raises(SendInterrupted, match="AccessDenied") as raised:
        send.run()
    assert raised.value.stats.queued == len(client.stored)
    rows = assert_recorded_as_stored(store, campaign_id, client)
    assert sum(status == "pending" for status, _ in rows.values()) == 200 - len(client.stored)
    # The lease is let go, so a rerun can take the campaign at once.
    assert store.campaigns.get(campaign_id)["lease_run_id"] is None


def test_an_entry_sqs_refuses_for_good_fails_with_its_code_and_the_rest_go(
    store: CampaignStore,
) -> None:
    client = FakeSqsClient()
    campaign_id = add_template_campaign(store)
    add_recipients(store, campaign_id, 30)
    ids = sorted(recorded(store, campaign_id))
    client.refuse = frozenset(ids[:2])
    message = store.claims.claim(campaign_id, "run-1", 60).message
    queue = SqsBatchQueue(client, QUEUE_URL, concurrency=CALLS_IN_FLIGHT)
    stats = ShardSend(
        message, Lease(store.claims, campaign_id, "run-1", 60), store.audience, queue
    ).run()
    assert (stats.queued, stats.failed) == (28, 2)
    rows = assert_recorded_as_stored(store, campaign_id, client)
    assert {rows[i][0] for i in ids[:2]} == {"failed"}
