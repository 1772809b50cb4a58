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


def claimed_send(
    store: CampaignStore,
    client: FakeSqsClient,
    campaign_id: str,
    run_id: str = "run-1",
    **options: Any,
) -> ShardSend:
    """The send of the whole campaign by `run_id`, which claims it, through `client`."""
    message = store.claims.claim(campaign_id, run_id, 60).message
    queue = SqsBatchQueue(client, QUEUE_URL, concurrency=CALLS_IN_FLIGHT)
    lease = Lease(store.claims, campaign_id, run_id, 60)
    return ShardSend(message, lease, store.audience, queue, store.suppressions, **options)


def shard_send(
    store: CampaignStore, client: FakeSqsClient, recipients: int
) -> tuple[str, ShardSend]:
    campaign_id = add_template_campaign(store)
    add_recipients(store, campaign_id, recipients)
    send = claimed_send(store, client, campaign_id, recipients_per_chunk=50, outcomes_per_write=10)
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
    stats = claimed_send(store, client, campaign_id).run()
    assert (stats.queued, stats.failed) == (28, 2)
    assert stats.failed_by_code == {"sqs_rejected": 2}
    rows = assert_recorded_as_stored(store, campaign_id, client)
    assert {rows[i][0] for i in ids[:2]} == {"failed"}
    assert set(codes(store, campaign_id).values()) == {None, "sqs_rejected"}


def codes(store: CampaignStore, campaign_id: str) -> dict[str, str | None]:
    """Each recipient's failure_code."""
    with store.engine.connect() as connection:
        return dict(
            connection.execute(
                sa.select(campaign_audience.c.id, campaign_audience.c.failure_code).where(
                    campaign_audience.c.campaign_id == campaign_id
                )
            )
            .tuples()
            .all()
        )


# r000's number is also r005's, r030's, ... (in each chunk of 50); r062 has r061's number.
SAME_PERSON = (0, 5, 30, 55, 80, 105, 119)


def duplicated_campaign(store: CampaignStore) -> tuple[str, list[str]]:
    """120 recipients, ids r000..r119 in order: `SAME_PERSON` share a number, r061 and r062
    share another, r090's number is invalid."""
    campaign_id = add_template_campaign(store)
    rows = []
    for i in range(120):
        number = f"+1555{i:07d}"
        if i in SAME_PERSON:
            number = "+15550000000"
        elif i == 62:
            number = "+15550000061"
        elif i == 90:
            number = "15550000090"
        rows.append({"id": f"r{i:03d}", "phone_number": number, "name": f"R{i}"})
    store.campaigns.add_recipients(campaign_id, rows)
    return campaign_id, [row["id"] for row in rows]


def test_duplicates_over_several_chunks_are_sent_once_to_the_smallest_id(
    store: CampaignStore,
) -> None:
    """Chunks of 50: r000's number recurs in every chunk; each duplicate names its keeper."""
    client = FakeSqsClient()
    campaign_id, _ = duplicated_campaign(store)
    stats = claimed_send(
        store, client, campaign_id, recipients_per_chunk=50, outcomes_per_write=10
    ).run()
    duplicates = {f"r{i:03d}" for i in SAME_PERSON[1:]} | {"r062"}
    assert (stats.queued, stats.failed) == (120 - len(duplicates) - 1, len(duplicates) + 1)
    assert stats.failed_by_code == {"duplicate": len(duplicates), "invalid": 1}
    rows = assert_recorded_as_stored(store, campaign_id, client)
    assert {id_ for id_, (status, _) in rows.items() if status == "failed"} == duplicates | {"r090"}
    assert "r000" in client.stored and "r061" in client.stored
    with store.engine.connect() as connection:
        reasons = dict(
            connection.execute(
                sa.select(campaign_audience.c.id, campaign_audience.c.failure_reason).where(
                    campaign_audience.c.campaign_id == campaign_id,
                    campaign_audience.c.failure_code == "duplicate",
                )
            )
            .tuples()
            .all()
        )
    keeper_is_r000 = "duplicate of recipient r000 (the same phone number)"
    assert reasons["r005"] == reasons["r119"] == keeper_is_r000
    assert reasons["r062"] == "duplicate of recipient r061 (the same phone number)"


def test_a_recipient_added_after_its_number_was_sent_is_a_duplicate_of_the_sent_one(
    store: CampaignStore,
) -> None:
    """A rerun after r000 was queued: a new recipient with its number and a smaller id is not
    sent (the queued one keeps the number), and neither is a resend of anyone."""
    client = FakeSqsClient()
    campaign_id, _ = duplicated_campaign(store)
    claimed_send(store, client, campaign_id).run()
    store.claims.release(campaign_id, "run-1")
    sent = dict(client.stored)
    store.campaigns.add_recipients(
        campaign_id,
        [
            {"id": "a-first", "phone_number": "+15550000000", "name": "again"},
            {"id": "a-new", "phone_number": "+15559999999", "name": "new"},
        ],
    )
    stats = claimed_send(store, client, campaign_id, "run-2").run()
    assert (stats.queued, stats.failed_by_code) == (1, {"duplicate": 1})
    assert client.stored == sent | {"a-new": client.stored["a-new"]}
    assert codes(store, campaign_id)["a-first"] == "duplicate"
