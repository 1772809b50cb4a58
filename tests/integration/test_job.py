"""The whole job against PostgreSQL and moto's SQS server over HTTP.

Assertions read what landed in the queue and in the tables: exact JSON per message type, statuses
and message ids, partial failures, reruns and concurrent runs. Faults come from the proxy in
`tests/support/fault_proxy.py`.
"""

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from campaign_pipeline.defs.jobs import campaign_run_config, process_campaign_messages
from campaign_pipeline.defs.ops import CampaignConfig
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import SqsQueue
from campaign_pipeline.sending.stats import SendStats, merge_stats
from campaign_pipeline.store.schema import campaign_audience
from tests.conftest import drain
from tests.support.fault_proxy import INJECTED_REASON, FaultProxy
from tests.support.payload_schema import payload_validator
from tests.support.send_processes import run_in_send_processes

ORGANIZATION_ID = "123e4567-e89b-12d3-a456-426614174000"
CAMPAIGN_ID = "123e4567-e89b-12d3-a456-426614174001"
AUDIENCE_ID = "123e4567-e89b-12d3-a456-426614174002"
HEAD = {
    "organizationId": ORGANIZATION_ID,
    "campaignId": CAMPAIGN_ID,
    "campaignAudienceId": AUDIENCE_ID,
    "to": "+1234567890",
}

# (campaign columns, the payload the spec shows for it)
SPEC_EXAMPLES = {
    "template": (
        {"message_type": "template", "template_name": "hello_world", "template_language": "en"},
        {**HEAD, "templateName": "hello_world", "templateLanguage": "en", "templateParameters": []},
    ),
    "template_with_parameters": (
        {
            "message_type": "template",
            "template_name": "welcome_message",
            "template_language": "en",
            "template_parameters": [
                {"type": "header", "valueType": "text", "value": "Welcome!"},
                {"type": "body", "valueType": "text", "value": "{{name}}"},
            ],
        },
        {
            **HEAD,
            "templateName": "welcome_message",
            "templateLanguage": "en",
            "templateParameters": [
                {"type": "header", "valueType": "text", "value": "Welcome!"},
                {"type": "body", "valueType": "text", "value": "John Doe"},
            ],
        },
    ),
    "text": (
        {"message_type": "text", "message_content": "Hello! This is a simple text message."},
        {**HEAD, "messageType": "text", "messageContent": "Hello! This is a simple text message."},
    ),
    "image": (
        {
            "message_type": "image",
            "media_url": "https://your-bucket.s3.amazonaws.com/images/personalized-offer.jpg",
            "caption": "Special offer just for you!",
        },
        {
            **HEAD,
            "messageType": "image",
            "mediaUrl": "https://your-bucket.s3.amazonaws.com/images/personalized-offer.jpg",
            "caption": "Special offer just for you!",
        },
    ),
    **{
        media: (
            {"message_type": media, "media_url": f"https://cdn.example.com/{media}.bin"},
            {
                **HEAD,
                "messageType": media,
                "mediaUrl": f"https://cdn.example.com/{media}.bin",
                "caption": "",
            },
        )
        for media in ("video", "document", "audio")
    },
}


def run_job(
    store: CampaignStore,
    queue: SqsQueue,
    campaign_id: str,
    instance: dg.DagsterInstance | None = None,
    **config: object,
) -> dg.ExecuteInProcessResult:
    return process_campaign_messages.execute_in_process(
        run_config=dg.RunConfig(
            ops={"claim_campaign": CampaignConfig(campaign_id=campaign_id, **config)}
        ),
        resources={"campaign_store": store, "sqs_queue": queue},
        instance=instance,
        raise_on_error=False,
    )


def sent(result: dg.ExecuteInProcessResult) -> SendStats:
    """What the run's send steps did, all shards together."""
    return merge_stats(result.output_for_node("send_campaign_messages").values())


def add_campaign(store: CampaignStore, recipients: int, invalid: int = 0, **fields: object) -> str:
    defaults = {
        "status": "asset_generated",
        "message_type": "text",
        "message_content": "Hi {{name}}",
    }
    campaign_id = store.campaigns.add(
        organization_id=ORGANIZATION_ID, name="test", **(defaults | fields)
    )
    store.campaigns.add_recipients(
        campaign_id,
        [{"phone_number": f"+1555{i:07d}", "name": f"R{i}"} for i in range(recipients)]
        + [{"phone_number": f"555{i:07d}", "name": "bad"} for i in range(invalid)],
    )
    return campaign_id


def audience(store: CampaignStore, campaign_id: str) -> dict[str, sa.Row]:
    with store.engine.connect() as connection:
        rows = connection.execute(
            sa.select(campaign_audience).where(campaign_audience.c.campaign_id == campaign_id)
        )
        return {row.id: row for row in rows}


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    (event,) = result.get_step_failure_events()
    return event.step_failure_data.user_failure_data.description or ""


def assert_accounted_for(store: CampaignStore, campaign_id: str, received: list[dict]) -> None:
    """Each ready_to_send row's message is in the queue once; no other message is there."""
    rows = audience(store, campaign_id)
    by_audience = Counter(json.loads(m["Body"])["campaignAudienceId"] for m in received)
    sent = {i: r for i, r in rows.items() if r.status == "ready_to_send"}
    assert set(by_audience) == set(sent)
    assert max(by_audience.values(), default=1) == 1
    message_ids = {json.loads(m["Body"])["campaignAudienceId"]: m["MessageId"] for m in received}
    for message in received:
        payload_validator().validate(json.loads(message["Body"]))
    assert {i: r.sqs_message_id for i, r in sent.items()} == message_ids
    assert all(r.failure_reason for r in rows.values() if r.status == "failed")


@pytest.mark.parametrize("example", sorted(SPEC_EXAMPLES))
def test_every_message_type_matches_the_spec(
    example: str,
    postgres_store: CampaignStore,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: object,
) -> None:
    """Each message type lands in the queue exactly as the spec's JSON, field order included."""
    columns, expected = SPEC_EXAMPLES[example]
    postgres_store.campaigns.add(
        id=CAMPAIGN_ID,
        organization_id=ORGANIZATION_ID,
        name=example,
        status="asset_generated",
        **columns,
    )
    postgres_store.campaigns.add_recipients(
        CAMPAIGN_ID, [{"id": AUDIENCE_ID, "phone_number": "+1234567890", "name": "John Doe"}]
    )
    queue = make_sqs_queue(fifo=True)
    assert run_job(postgres_store, queue, CAMPAIGN_ID).success
    (message,) = drain(sqs_client, queue.queue_url)
    assert list(json.loads(message["Body"]).items()) == list(expected.items())
    payload_validator().validate(json.loads(message["Body"]))
    row = audience(postgres_store, CAMPAIGN_ID)[AUDIENCE_ID]
    assert (row.status, row.sqs_message_id) == ("ready_to_send", message["MessageId"])
    campaign = postgres_store.campaigns.get(CAMPAIGN_ID)
    assert (campaign["status"], campaign["queued_count"]) == ("ready_to_launch", 1)


@pytest.mark.parametrize("fifo", [True, False], ids=["fifo", "standard"])
def test_campaign_is_queued_and_every_recipient_accounted_for(
    fifo: bool,
    postgres_store: CampaignStore,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: object,
) -> None:
    """Valid recipients are queued with their message id, invalid ones failed with a reason."""
    campaign_id = add_campaign(postgres_store, recipients=23, invalid=2)
    queue = make_sqs_queue(fifo=fifo)
    result = run_job(
        postgres_store, queue, campaign_id, recipients_per_chunk=7, outcomes_per_write=5
    )
    assert result.success
    assert result.output_for_node("complete_campaign") == {
        "pending": 0,
        "ready_to_send": 23,
        "failed": 2,
    }
    received = drain(sqs_client, queue.queue_url)
    assert len(received) == 23
    assert_accounted_for(postgres_store, campaign_id, received)
    failed = [r for r in audience(postgres_store, campaign_id).values() if r.status == "failed"]
    assert {r.failure_reason for r in failed} == {"phone number must start with '+' (E.164)"}


def test_send_metadata_has_counts_and_no_phone_numbers(
    postgres_store: CampaignStore, make_sqs_queue: Callable[..., SqsQueue], sqs_client: object
) -> None:
    """The send op reports counts, batches and the queue; no phone number is in the events."""
    campaign_id = add_campaign(postgres_store, recipients=12, invalid=1)
    queue = make_sqs_queue(fifo=True)
    result = run_job(postgres_store, queue, campaign_id)
    metadata = {
        event.step_key: event.event_specific_data.metadata
        for event in result.all_node_events
        if event.event_type == dg.DagsterEventType.STEP_OUTPUT
    }["send_campaign_messages[shard_0]"]
    assert metadata["queued"].value == 12
    assert metadata["failed"].value == 1
    assert metadata["batches"].value == 2
    assert metadata["queue"].value == queue.queue_url
    assert "phone number must start with '+'" in metadata["failed_by_reason"].value
    assert metadata["failed_by_code"].value == {"invalid": 1}
    everything = " ".join(str(event) for event in result.all_events)
    assert "+1555" not in everything and "5550000" not in everything
    drain(sqs_client, queue.queue_url)


def test_partial_batch_failure_marks_rejected_recipients_failed(
    sqs_endpoint: str,
    postgres_store: CampaignStore,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: object,
) -> None:
    """Entries SQS rejects are failed with its error; throttled ones are retried and queued."""
    campaign_id = add_campaign(postgres_store, recipients=20)
    ids = sorted(audience(postgres_store, campaign_id))
    rejected, throttled = set(ids[:3]), set(ids[3:6])

    def fault(entry: dict, attempt: int) -> tuple[str, bool] | None:
        if entry["Id"] in rejected:
            return ("InvalidMessageContents", True)
        if entry["Id"] in throttled and attempt == 1:
            return ("RequestThrottled", True)
        return None

    with FaultProxy(sqs_endpoint, entry_fault=fault) as proxy:
        queue = make_sqs_queue(fifo=True, endpoint=proxy.url, retry_base_seconds=0.01)
        result = run_job(postgres_store, queue, campaign_id)
    assert result.success
    rows = audience(postgres_store, campaign_id)
    assert {i for i, r in rows.items() if r.status == "failed"} == rejected
    assert all(
        rows[i].failure_reason
        == f"SQS rejected the message (InvalidMessageContents): {INJECTED_REASON}"
        for i in rejected
    )
    stats = sent(result)
    assert stats.retried_entries == 3
    assert_accounted_for(postgres_store, campaign_id, drain(sqs_client, queue.queue_url))


def test_rerun_after_success_sends_nothing(
    postgres_store: CampaignStore, make_sqs_queue: Callable[..., SqsQueue], sqs_client: object
) -> None:
    """A second run of a finished campaign succeeds without sending anything."""
    campaign_id = add_campaign(postgres_store, recipients=5)
    queue = make_sqs_queue(fifo=False)
    assert run_job(postgres_store, queue, campaign_id).success
    assert len(drain(sqs_client, queue.queue_url)) == 5
    again = run_job(postgres_store, queue, campaign_id)
    assert again.success
    assert sent(again).recipients == 0
    assert drain(sqs_client, queue.queue_url) == []


def test_rerun_after_sqs_outage_sends_only_the_rest(
    sqs_endpoint: str,
    postgres_store: CampaignStore,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: object,
) -> None:
    """SQS failing mid-campaign fails the run with nothing wrongly marked; a rerun finishes it."""
    campaign_id = add_campaign(postgres_store, recipients=45)
    outage = FaultProxy(
        sqs_endpoint,
        request_fault=lambda action, call: (
            503 if action == "SendMessageBatch" and call > 2 else None
        ),
    )
    with outage:
        queue = make_sqs_queue(
            fifo=False, endpoint=outage.url, max_attempts=2, max_concurrent_batches=1
        )
        failed_run = run_job(postgres_store, queue, campaign_id, outcomes_per_write=10)
    assert not failed_run.success
    assert "SQS failed past its retries" in failure_message(failed_run)
    statuses = Counter(r.status for r in audience(postgres_store, campaign_id).values())
    assert statuses == {"ready_to_send": 20, "pending": 25}
    first = drain(sqs_client, queue.queue_url)
    assert_accounted_for(postgres_store, campaign_id, first)

    direct = SqsQueue(
        queue_url=queue.queue_url, region_name=queue.region_name, endpoint_url=sqs_endpoint
    )
    rerun = run_job(postgres_store, direct, campaign_id)
    assert rerun.success
    assert sent(rerun).queued == 25
    assert_accounted_for(postgres_store, campaign_id, first + drain(sqs_client, queue.queue_url))


@pytest.mark.parametrize(
    ("status", "campaign_id", "message"),
    [
        ("draft", None, "is 'draft'"),
        ("asset_generated", "not-a-uuid", "is not a UUID"),
        ("asset_generated", "00000000-0000-0000-0000-000000000000", "does not exist"),
    ],
)
def test_unprocessable_campaigns_fail_with_a_clear_reason(
    status: str,
    campaign_id: str | None,
    message: str,
    sqlite_store: CampaignStore,
    make_sqs_queue: Callable[..., SqsQueue],
) -> None:
    """A campaign in another status, a malformed id or an unknown one fails at the claim."""
    real_id = add_campaign(sqlite_store, recipients=1, status=status)
    result = run_job(sqlite_store, make_sqs_queue(fifo=False), campaign_id or real_id)
    assert not result.success
    assert message in failure_message(result)
    assert sqlite_store.campaigns.get(real_id)["status"] == status


def test_unknown_message_type_marks_the_campaign_failed(
    sqlite_store: CampaignStore, make_sqs_queue: Callable[..., SqsQueue]
) -> None:
    """A campaign that can never be sent is failed with the reason; recipients stay untouched."""
    campaign_id = add_campaign(sqlite_store, recipients=2, message_type="sticker")
    result = run_job(sqlite_store, make_sqs_queue(fifo=False), campaign_id)
    assert not result.success
    campaign = sqlite_store.campaigns.get(campaign_id)
    assert campaign["status"] == "failed"
    assert "unknown message type 'sticker'" in campaign["last_error"]
    assert {r.status for r in audience(sqlite_store, campaign_id).values()} == {"pending"}


def test_shards_cover_every_recipient_once(
    postgres_store: CampaignStore, make_sqs_queue: Callable[..., SqsQueue], sqs_client: object
) -> None:
    """A campaign cut into shards of ten: one send step each, every recipient queued once."""
    campaign_id = add_campaign(postgres_store, recipients=25, invalid=1)
    queue = make_sqs_queue(fifo=False)
    result = run_job(postgres_store, queue, campaign_id, recipients_per_shard=10)
    assert result.success
    assert sorted(result.output_for_node("send_campaign_messages")) == [
        "shard_0",
        "shard_1",
        "shard_2",
    ]
    assert sent(result).queued == 25
    assert_accounted_for(postgres_store, campaign_id, drain(sqs_client, queue.queue_url))


def test_shards_run_in_parallel_processes(
    postgres_store: CampaignStore,
    postgres_url: str,
    make_queue: Callable[..., str],
    sqs_endpoint: str,
    sqs_client: object,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under the multiprocess executor, with the code location's own resources, shards all land."""
    campaign_id = add_campaign(postgres_store, recipients=30)
    queue_url = make_queue(fifo=True)
    with run_in_send_processes(
        monkeypatch,
        tmp_path,
        database_url=postgres_url,
        queue_url=queue_url,
        sqs_endpoint=sqs_endpoint,
        campaign_id=campaign_id,
        recipients_per_shard=15,
    ) as (result, instance):
        assert result.success
        pids = {
            entry.dagster_event.pid
            for entry in instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_START)
            if entry.step_key.startswith("send_campaign_messages")
        }
    assert len(pids) == 2
    assert postgres_store.audience.counts(campaign_id)["ready_to_send"] == 30
    assert_accounted_for(postgres_store, campaign_id, drain(sqs_client, queue_url))


def test_a_partitions_run_uses_the_partitions_config_and_is_filed_under_it(
    postgres_store: CampaignStore,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: object,
    tmp_path: Path,
) -> None:
    """A run of partition <campaign id> with no run config (a backfill, the launchpad) gets
    its config and campaign_id tag from the partition, sends the campaign, and is one of the
    partition's runs; a GraphQL-style launch without a partition is filed under it by its claim.
    """
    first, second = add_campaign(postgres_store, 3), add_campaign(postgres_store, 2)
    queue = make_sqs_queue(fifo=False)
    resources = {"campaign_store": postgres_store, "sqs_queue": queue}
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        instance.add_dynamic_partitions("campaigns", [first])
        by_partition = process_campaign_messages.execute_in_process(
            partition_key=first, resources=resources, instance=instance, raise_on_error=False
        )
        assert by_partition.success
        assert by_partition.dagster_run.tags["campaign_id"] == first
        by_config = process_campaign_messages.execute_in_process(
            run_config=campaign_run_config(second),
            resources=resources,
            instance=instance,
            raise_on_error=False,
        )
        assert by_config.success
        assert set(instance.get_dynamic_partitions("campaigns")) == {first, second}
        filed = instance.get_run_by_id(by_config.run_id)
        assert filed is not None
        assert filed.tags["dagster/partition"] == second
        assert filed.tags["campaign_name"] == "test"
    assert len(drain(sqs_client, queue.queue_url)) == 5


def test_a_partition_and_a_config_naming_different_campaigns_fail_the_run(
    postgres_store: CampaignStore, make_sqs_queue: Callable[..., SqsQueue], tmp_path: Path
) -> None:
    """Partition A with campaign_id B in its config: one line naming both, nothing claimed."""
    first, second = add_campaign(postgres_store, 1), add_campaign(postgres_store, 1)
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        instance.add_dynamic_partitions("campaigns", [first])
        result = process_campaign_messages.execute_in_process(
            run_config=campaign_run_config(second),
            partition_key=first,
            resources={"campaign_store": postgres_store, "sqs_queue": make_sqs_queue()},
            instance=instance,
            raise_on_error=False,
        )
    assert not result.success
    assert failure_message(result) == (
        f"the run's partition {first!r} and its config's campaign_id {second!r} name "
        "different campaigns"
    )
    assert postgres_store.campaigns.get(second)["status"] == "asset_generated"
