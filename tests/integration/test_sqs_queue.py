"""The SQS resource against moto's server over HTTP: credentials, FIFO ids, standard queues,
fair-queue groups (moto stores a standard queue's MessageGroupId and returns it), concurrency,
and partial failures through the fault-injecting proxy.

Retry decisions with botocore's Stubber are in `tests/unit/test_sqs_batches.py`.
"""

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from botocore.exceptions import ProfileNotFound

from campaign_pipeline.defs.jobs import campaign_run_config, process_campaign_messages
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import SqsQueue
from tests.conftest import REGION, drain, send_shard
from tests.support.campaigns import add_recipients, add_template_campaign
from tests.support.fault_proxy import FaultProxy

CAMPAIGN_ID = "123e4567-e89b-12d3-a456-426614174001"


def messages(count: int, prefix: str = "a") -> tuple[list[str], list[str]]:
    """(ids, bodies) of `count` messages."""
    return [f"{prefix}{i}" for i in range(count)], [json.dumps({"n": i}) for i in range(count)]


def test_credential_fields_sign_the_requests(
    make_sqs_queue: Callable[..., SqsQueue], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Credentials given as fields sign each call in place of boto3's default chain."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-the-environment")
    queue = make_sqs_queue(
        fifo=False, aws_access_key_id="AKIAFIELDKEY", aws_secret_access_key="field-secret"
    )
    signed: list[str] = []
    queue.client.meta.events.register(
        "before-send.sqs", lambda request, **_: signed.append(request.headers["Authorization"])
    )
    assert len(queue.batch_queue().send_batch(CAMPAIGN_ID, *messages(2)).accepted_ids) == 2
    assert signed
    assert all(b"Credential=AKIAFIELDKEY/" in header for header in signed)


def test_fifo_entries_carry_campaign_group_and_deduplication_ids(
    make_sqs_queue: Callable[..., SqsQueue], sqs_client: object
) -> None:
    """On a FIFO queue the group is the campaign and a resend within 5 minutes is dropped."""
    queue = make_sqs_queue(fifo=True)
    first = queue.batch_queue().send_batch(CAMPAIGN_ID, *messages(3))
    again = queue.batch_queue().send_batch(CAMPAIGN_ID, *messages(3))
    assert len(first.accepted_ids) == len(again.accepted_ids) == 3
    received = drain(sqs_client, queue.queue_url)
    assert len(received) == 3
    assert {m["Attributes"]["MessageGroupId"] for m in received} == {CAMPAIGN_ID}
    assert {m["Attributes"]["MessageDeduplicationId"] for m in received} == {
        f"{CAMPAIGN_ID}:a{i}" for i in range(3)
    }
    assert set(first.message_ids) == {m["MessageId"] for m in received}


def test_fifo_group_id_comes_from_sqs_message_group_id(
    make_sqs_queue: Callable[..., SqsQueue], sqs_client: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQS_MESSAGE_GROUP_ID replaces the per-campaign group."""
    monkeypatch.setenv("SQS_MESSAGE_GROUP_ID", "whatsapp-messages")
    queue = make_sqs_queue(fifo=True)
    queue.batch_queue().send_batch(CAMPAIGN_ID, *messages(2))
    received = drain(sqs_client, queue.queue_url)
    assert {m["Attributes"]["MessageGroupId"] for m in received} == {"whatsapp-messages"}


def test_the_resources_message_group_id_wins_over_sqs_message_group_id(
    make_sqs_queue: Callable[..., SqsQueue], sqs_client: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SQS_MESSAGE_GROUP_ID", "from-the-environment")
    queue = make_sqs_queue(fifo=True, message_group_id="from-the-resource")
    queue.batch_queue().send_batch(CAMPAIGN_ID, *messages(2))
    received = drain(sqs_client, queue.queue_url)
    assert {m["Attributes"]["MessageGroupId"] for m in received} == {"from-the-resource"}


def test_standard_queue_gets_plain_entries(
    make_sqs_queue: Callable[..., SqsQueue], sqs_client: object
) -> None:
    """A standard queue takes the bodies as they are, without FIFO ids."""
    queue = make_sqs_queue(fifo=False)
    result = queue.batch_queue().send_batch(CAMPAIGN_ID, *messages(10))
    assert len(result.accepted_ids) == 10
    received = drain(sqs_client, queue.queue_url)
    assert sorted(json.loads(m["Body"])["n"] for m in received) == list(range(10))
    assert "MessageGroupId" not in received[0]["Attributes"]


def test_max_message_bytes_is_read_from_the_queue(make_sqs_queue: Callable[..., SqsQueue]) -> None:
    """The batch and message size limit comes from the queue's MaximumMessageSize."""
    queue = make_sqs_queue(fifo=False)
    queue.client.set_queue_attributes(
        QueueUrl=queue.queue_url, Attributes={"MaximumMessageSize": "2048"}
    )
    assert queue.batch_queue().max_message_bytes() == 2048


def test_send_batches_yields_every_batch_with_concurrent_calls(
    make_sqs_queue: Callable[..., SqsQueue], sqs_client: object
) -> None:
    """All batches come back, each entry exactly once, with several calls in flight."""
    queue = make_sqs_queue(fifo=False, max_concurrent_batches=4)
    batches = [messages(10, prefix=f"b{b}x") for b in range(6)]
    results = list(queue.batch_queue().send_batches(CAMPAIGN_ID, batches))
    assert len(results) == 6
    ids = [i for r in results for i in r.accepted_ids]
    assert sorted(ids) == sorted(i for batch_ids, _ in batches for i in batch_ids)
    assert len(drain(sqs_client, queue.queue_url)) == 60


def test_partial_batch_failure_against_the_real_endpoint(
    sqs_endpoint: str, make_sqs_queue: Callable[..., SqsQueue], sqs_client: object
) -> None:
    """Through the proxy: a sender fault is final, a throttled entry lands once after a retry."""

    def fault(entry: dict, attempt: int) -> tuple[str, bool] | None:
        if entry["Id"] == "a1":
            return ("InvalidParameterValue", True)
        if entry["Id"] == "a2" and attempt == 1:
            return ("RequestThrottled", True)
        return None

    with FaultProxy(sqs_endpoint, entry_fault=fault) as proxy:
        queue = make_sqs_queue(fifo=False, endpoint=proxy.url, retry_base_seconds=0)
        result = queue.batch_queue().send_batch(CAMPAIGN_ID, *messages(4))
    assert [(i, code) for i, code, _ in result.rejected] == [("a1", "InvalidParameterValue")]
    assert sorted(result.accepted_ids) == ["a0", "a2", "a3"]
    assert result.retried_entries == 1
    received = sorted(json.loads(m["Body"])["n"] for m in drain(sqs_client, queue.queue_url))
    assert received == [0, 2, 3]


def test_send_batches_stops_taking_batches_after_an_error(
    sqs_endpoint: str, make_sqs_queue: Callable[..., SqsQueue]
) -> None:
    """When SQS stays down, no further batch is started and the error is reported."""
    with FaultProxy(sqs_endpoint, request_fault=lambda action, call: 503) as proxy:
        queue = make_sqs_queue(
            fifo=False, endpoint=proxy.url, max_attempts=2, max_concurrent_batches=1
        )
        results = list(queue.batch_queue().send_batches(CAMPAIGN_ID, [messages(10)] * 5))
    assert len(results) == 1
    assert results[0].error is not None
    assert not results[0].accepted_ids and not results[0].rejected


ORGANIZATION_ID = "123e4567-e89b-12d3-a456-426614174000"


@pytest.mark.parametrize(
    ("grouping", "expected"), [("organization", ORGANIZATION_ID), ("campaign", CAMPAIGN_ID)]
)
def test_a_standard_queue_groups_messages_by_organization_or_campaign(
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: object,
    monkeypatch: pytest.MonkeyPatch,
    grouping: str,
    expected: str,
) -> None:
    """SQS_FAIR_QUEUE_GROUP names each message's group; moto stores it and hands it back."""
    monkeypatch.setenv("SQS_FAIR_QUEUE_GROUP", grouping)
    queue = make_sqs_queue(fifo=False)
    group = queue.batch_queue().fair_group_id(CAMPAIGN_ID, ORGANIZATION_ID)
    assert group == expected
    results = list(
        queue.batch_queue().send_batches(CAMPAIGN_ID, [messages(10), messages(5, "b")], group)
    )
    assert sum(len(r.accepted_ids) for r in results) == 15
    received = drain(sqs_client, queue.queue_url)
    assert len(received) == 15
    assert {m["Attributes"]["MessageGroupId"] for m in received} == {expected}
    assert not any("MessageDeduplicationId" in m["Attributes"] for m in received)


def test_a_campaigns_messages_carry_its_organization_as_their_group(
    sqlite_store: CampaignStore,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the send loop: every message of the campaign is in its organization's group."""
    monkeypatch.setenv("SQS_FAIR_QUEUE_GROUP", "organization")
    campaign_id = add_template_campaign(sqlite_store)
    add_recipients(sqlite_store, campaign_id, 25)
    message = sqlite_store.claims.claim(campaign_id, "run-1", 60).message
    queue = make_sqs_queue(fifo=False)
    stats = send_shard(sqlite_store, queue, message, recipients_per_chunk=10, outcomes_per_write=10)
    assert stats.queued == 25
    received = drain(sqs_client, queue.queue_url)
    assert len(received) == 25
    assert {m["Attributes"]["MessageGroupId"] for m in received} == {message.organization_id}


def test_without_a_grouping_a_standard_queue_gets_no_group(
    make_sqs_queue: Callable[..., SqsQueue], sqs_client: object
) -> None:
    """SQS_FAIR_QUEUE_GROUP unset: no MessageGroupId at all, as before fair queues."""
    queue = make_sqs_queue(fifo=False)
    group = queue.batch_queue().fair_group_id(CAMPAIGN_ID, ORGANIZATION_ID)
    assert group is None
    list(queue.batch_queue().send_batches(CAMPAIGN_ID, [messages(3)], group))
    received = drain(sqs_client, queue.queue_url)
    assert len(received) == 3
    assert not any("MessageGroupId" in m["Attributes"] for m in received)


def test_a_fifo_queue_keeps_its_own_group_whatever_the_fair_grouping(
    make_sqs_queue: Callable[..., SqsQueue], sqs_client: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a FIFO queue SQS_FAIR_QUEUE_GROUP is ignored: the group is still the campaign."""
    monkeypatch.setenv("SQS_FAIR_QUEUE_GROUP", "organization")
    queue = make_sqs_queue(fifo=True)
    group = queue.batch_queue().fair_group_id(CAMPAIGN_ID, ORGANIZATION_ID)
    assert group is None
    list(queue.batch_queue().send_batches(CAMPAIGN_ID, [messages(3)], group))
    received = drain(sqs_client, queue.queue_url)
    assert {m["Attributes"]["MessageGroupId"] for m in received} == {CAMPAIGN_ID}


def test_a_bad_fair_grouping_fails_the_run_in_one_line_sending_nothing(
    postgres_store: CampaignStore,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The send step fails with the one line before any batch; the lease is let go."""
    monkeypatch.setenv("SQS_FAIR_QUEUE_GROUP", "tenant")
    campaign_id = add_template_campaign(postgres_store)
    add_recipients(postgres_store, campaign_id, 5)
    queue = make_sqs_queue(fifo=False)
    result = process_campaign_messages.execute_in_process(
        run_config=campaign_run_config(campaign_id),
        resources={"campaign_store": postgres_store, "sqs_queue": queue},
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert failure.step_key.startswith("send_campaign_messages")
    assert failure.step_failure_data.user_failure_data.description == (
        "SQS_FAIR_QUEUE_GROUP must be one of organization, campaign, not 'tenant'"
    )
    assert drain(sqs_client, queue.queue_url) == []
    assert postgres_store.audience.counts(campaign_id)["pending"] == 5
    assert postgres_store.campaigns.get(campaign_id)["lease_run_id"] is None


def test_unknown_profile_is_refused_by_name(tmp_path: Path) -> None:
    """profile_name picks a profile of the AWS config files; an unknown one is named."""
    config = tmp_path / "config"
    config.write_text("[profile campaigns]\nregion = eu-west-1\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_CONFIG_FILE", str(config))
        known = SqsQueue(queue_url="https://x/q", region_name=REGION, profile_name="campaigns")
        assert known.client.meta.region_name == REGION
        unknown = SqsQueue(queue_url="https://x/q", region_name=REGION, profile_name="nope")
        with pytest.raises(ProfileNotFound, match="nope"):
            _ = unknown.client
