"""Failures recorded on the campaign, stale leases taken over, stalled campaigns resumed.

Real parts throughout: the campaign store on SQLite and PostgreSQL, a Dagster instance on disk
(`dg.instance_for_test`) holding real runs of `process_campaign_messages`, and moto's SQS server
over HTTP (behind `tests/support/fault_proxy.py` for outages). The two sensors are evaluated the
way the daemon would, against that instance; the runs they request are executed in process.
Tests that send drain their queue and count messages per campaignAudienceId: nothing is sent
twice.
"""

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from campaign_pipeline.defs.jobs import campaign_run_config, process_campaign_messages
from campaign_pipeline.defs.sensors import (
    record_campaign_run_failure,
    resume_stalled_campaigns_sensor,
)
from campaign_pipeline.defs.tags import RESUME_ATTEMPT_TAG, campaign_tags
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import SqsQueue
from campaign_pipeline.store.records import Outcomes
from campaign_pipeline.store.schema import campaign_audience
from tests.conftest import REGION, drain, free_port
from tests.support.fault_proxy import FaultProxy
from tests.support.send_processes import definitions_job

ORGANIZATION_ID = "123e4567-e89b-12d3-a456-426614174000"


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    """A Dagster instance on disk: runs, their events and their tags, as the daemon sees them."""
    home = tmp_path / "dagster"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        yield instance


def add_campaign(store: CampaignStore, recipients: int) -> str:
    campaign_id = store.campaigns.add(
        organization_id=ORGANIZATION_ID,
        name="recovery",
        status="asset_generated",
        message_type="text",
        message_content="Hi {{name}}",
    )
    store.campaigns.add_recipients(
        campaign_id,
        [{"phone_number": f"+1555{i:07d}", "name": f"R{i}"} for i in range(recipients)],
    )
    return campaign_id


def unreachable_queue(make_sqs_queue: Callable[..., SqsQueue]) -> SqsQueue:
    """A real queue behind an endpoint nobody listens on: the run fails at its first SQS call."""
    return make_sqs_queue(fifo=False, endpoint=f"http://127.0.0.1:{free_port()}", max_attempts=1)


def run(
    instance: dg.DagsterInstance,
    store: CampaignStore,
    queue: SqsQueue,
    run_config: dict,
    tags: dict[str, str] | None = None,
) -> dg.ExecuteInProcessResult:
    """Execute the job in the instance with the run config and tags a launcher would give it."""
    return process_campaign_messages.execute_in_process(
        run_config=run_config,
        resources={"campaign_store": store, "sqs_queue": queue},
        instance=instance,
        tags=tags,
        raise_on_error=False,
    )


def first_run(
    instance: dg.DagsterInstance, store: CampaignStore, queue: SqsQueue, campaign_id: str
) -> dg.ExecuteInProcessResult:
    """The run the asset_generated sensor would start."""
    return run(
        instance,
        store,
        queue,
        campaign_run_config(campaign_id),
        campaign_tags(campaign_id, ORGANIZATION_ID),
    )


def launch(
    instance: dg.DagsterInstance, store: CampaignStore, queue: SqsQueue, request: dg.RunRequest
) -> dg.ExecuteInProcessResult:
    """Execute a run the recovery sensor requested."""
    return run(instance, store, queue, request.run_config, request.tags)


def record_failure(
    instance: dg.DagsterInstance, store: CampaignStore, result: dg.ExecuteInProcessResult
) -> None:
    """Evaluate the run-failure sensor on a failed run, as the daemon does."""
    assert not result.success
    with dg.build_run_status_sensor_context(
        sensor_name=record_campaign_run_failure.name,
        dagster_event=result.get_run_failure_event(),
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        resources={"campaign_store": store},
    ) as context:
        record_campaign_run_failure(context)


def evaluate_recovery(
    instance: dg.DagsterInstance, store: CampaignStore
) -> dg.SensorResult | dg.SkipReason:
    with dg.build_sensor_context(instance=instance, resources={"campaign_store": store}) as context:
        return resume_stalled_campaigns_sensor(context)


def audience_ids(store: CampaignStore, campaign_id: str) -> list[str]:
    with store.engine.connect() as connection:
        return sorted(
            connection.execute(
                sa.select(campaign_audience.c.id).where(
                    campaign_audience.c.campaign_id == campaign_id
                )
            ).scalars()
        )


def counts_per_recipient(sqs_client: object, queue_url: str) -> Counter[str]:
    """Messages in the queue per campaignAudienceId (the queue is drained)."""
    return Counter(
        json.loads(message["Body"])["campaignAudienceId"]
        for message in drain(sqs_client, queue_url)
    )


def test_failed_run_is_recorded_then_resumed_and_the_error_cleared(
    store: CampaignStore,
    instance: dg.DagsterInstance,
    sqs_endpoint: str,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: object,
) -> None:
    """SQS failing mid-campaign: error on the campaign, a resume run finishes it, error cleared."""
    campaign_id = add_campaign(store, recipients=35)
    outage = FaultProxy(
        sqs_endpoint,
        request_fault=lambda action, call: (
            503 if action == "SendMessageBatch" and call > 2 else None
        ),
    )
    with outage:
        broken = make_sqs_queue(
            fifo=False, endpoint=outage.url, max_attempts=1, max_concurrent_batches=1
        )
        failed = first_run(instance, store, broken, campaign_id)
    assert store.audience.counts(campaign_id) == {"pending": 15, "ready_to_send": 20, "failed": 0}
    before = store.campaigns.get(campaign_id)

    record_failure(instance, store, failed)

    campaign = store.campaigns.get(campaign_id)
    assert campaign["last_error"].startswith("send_campaign_messages[shard_0]: SQS failed")
    assert "\n" not in campaign["last_error"]
    assert campaign["last_error_run_id"] == failed.run_id
    assert campaign["last_error_at"] is not None
    assert campaign["lease_run_id"] is None
    assert (campaign["status"], campaign["version"]) == (before["status"], before["version"])
    assert store.audience.counts(campaign_id) == {"pending": 15, "ready_to_send": 20, "failed": 0}

    (request,) = evaluate_recovery(instance, store).run_requests
    assert request.tags == {
        "campaign_id": campaign_id,
        "organization_id": ORGANIZATION_ID,
        RESUME_ATTEMPT_TAG: "1",
    }
    assert request.run_key == f"{campaign_id}:v1:resume1"
    healthy = SqsQueue(queue_url=broken.queue_url, region_name=REGION, endpoint_url=sqs_endpoint)
    resumed = launch(instance, store, healthy, request)
    assert resumed.success

    campaign = store.campaigns.get(campaign_id)
    assert campaign["last_error"] is None
    assert campaign["last_error_run_id"] is None
    assert campaign["resume_attempts"] == 0
    assert (campaign["queued_count"], campaign["pending_count"]) == (35, 0)
    received = counts_per_recipient(sqs_client, broken.queue_url)
    assert len(received) == 35
    assert set(received.values()) == {1}
    assert isinstance(evaluate_recovery(instance, store), dg.SkipReason)
    runs = instance.get_runs(dg.RunsFilter(tags={"campaign_id": campaign_id}))
    assert {r.run_id for r in runs} == {failed.run_id, resumed.run_id}


def test_resume_attempts_are_bounded_then_the_campaign_fails_with_the_reason(
    store: CampaignStore,
    instance: dg.DagsterInstance,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: object,
) -> None:
    """Three resume runs that fail, then the campaign is failed with the last error."""
    campaign_id = add_campaign(store, recipients=3)
    queue = unreachable_queue(make_sqs_queue)
    result = first_run(instance, store, queue, campaign_id)
    run_keys = []
    for attempt in (1, 2, 3):
        record_failure(instance, store, result)
        (request,) = evaluate_recovery(instance, store).run_requests
        assert request.tags[RESUME_ATTEMPT_TAG] == str(attempt)
        run_keys.append(request.run_key)
        assert store.campaigns.get(campaign_id)["resume_attempts"] == attempt
        result = launch(instance, store, queue, request)
    record_failure(instance, store, result)

    skipped = evaluate_recovery(instance, store)
    assert isinstance(skipped, dg.SkipReason)
    assert "gave up on 1" in skipped.skip_message
    campaign = store.campaigns.get(campaign_id)
    assert campaign["status"] == "failed"
    assert campaign["last_error"].startswith(
        "gave up after 3 resume attempts; last error: send_campaign_messages[shard_0]: "
        "EndpointConnectionError: Could not connect to the endpoint URL"
    )
    assert len(set(run_keys)) == 3
    assert store.audience.counts(campaign_id)["pending"] == 3
    assert isinstance(evaluate_recovery(instance, store), dg.SkipReason)
    assert len(instance.get_runs(dg.RunsFilter(tags={"campaign_id": campaign_id}))) == 4
    assert drain(sqs_client, queue.queue_url) == []


def test_max_resume_attempts_comes_from_the_environment(
    sqlite_store: CampaignStore,
    instance: dg.DagsterInstance,
    make_sqs_queue: Callable[..., SqsQueue],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CAMPAIGN_MAX_RESUME_ATTEMPTS=1: one resume run, then the campaign is failed."""
    monkeypatch.setenv("CAMPAIGN_MAX_RESUME_ATTEMPTS", "1")
    campaign_id = add_campaign(sqlite_store, recipients=1)
    queue = unreachable_queue(make_sqs_queue)
    record_failure(instance, sqlite_store, first_run(instance, sqlite_store, queue, campaign_id))
    (request,) = evaluate_recovery(instance, sqlite_store).run_requests
    record_failure(instance, sqlite_store, launch(instance, sqlite_store, queue, request))
    assert isinstance(evaluate_recovery(instance, sqlite_store), dg.SkipReason)
    campaign = sqlite_store.campaigns.get(campaign_id)
    assert campaign["status"] == "failed"
    assert campaign["last_error"].startswith("gave up after 1 resume attempts; last error: ")


@pytest.mark.parametrize("named_by", ["tag", "run config", "lease"])
def test_campaign_with_a_run_in_progress_is_not_resumed(
    named_by: str, store: CampaignStore, instance: dg.DagsterInstance
) -> None:
    """An unfinished run of the campaign, found by tag, run config or lease, blocks resumption."""
    campaign_id = add_campaign(store, recipients=2)
    config_for = campaign_id if named_by == "run config" else add_campaign(store, recipients=0)
    live = instance.create_run_for_job(
        process_campaign_messages,
        run_config=campaign_run_config(config_for),
        tags={"campaign_id": campaign_id} if named_by == "tag" else {},
    )
    # The lease has expired, so only Dagster knows the run is still going.
    store.claims.claim(
        campaign_id, live.run_id, lease_seconds=0.001 if named_by != "lease" else 300
    )
    assert not instance.get_run_by_id(live.run_id).is_finished
    assert isinstance(evaluate_recovery(instance, store), dg.SkipReason)
    assert store.campaigns.get(campaign_id)["resume_attempts"] == 0

    instance.report_run_failed(instance.get_run_by_id(live.run_id))
    (request,) = evaluate_recovery(instance, store).run_requests
    assert request.tags["campaign_id"] == campaign_id


@pytest.mark.parametrize("holder", ["failed", "canceled"])
def test_claim_takes_over_the_lease_of_a_run_that_is_gone(
    holder: str,
    store: CampaignStore,
    instance: dg.DagsterInstance,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: object,
) -> None:
    """A lease still live but held by a finished run is taken over at once."""
    campaign_id = add_campaign(store, recipients=14)
    gone = instance.create_run_for_job(
        process_campaign_messages, run_config=campaign_run_config(campaign_id)
    )
    gone_run_id = gone.run_id
    # As a run killed with SIGKILL leaves it: claimed, some recipients queued, lease live.
    store.claims.claim(campaign_id, gone_run_id, lease_seconds=300)
    queue = make_sqs_queue(fifo=False)
    already = audience_ids(store, campaign_id)[:4]
    outcomes = Outcomes()
    outcomes.add_sent(already, [f"m-{i}" for i in already])
    store.audience.record_outcomes(campaign_id, gone_run_id, outcomes, lease_seconds=300)
    if holder == "failed":
        instance.report_run_failed(instance.get_run_by_id(gone_run_id))
    elif holder == "canceled":
        instance.report_run_canceled(instance.get_run_by_id(gone_run_id))

    result = first_run(instance, store, queue, campaign_id)

    assert result.success
    took_over = [
        entry.user_message
        for entry in instance.all_logs(result.run_id)
        if f"over from run {gone_run_id}" in entry.user_message
    ]
    assert len(took_over) == 1
    received = counts_per_recipient(sqs_client, queue.queue_url)
    assert set(received) == set(audience_ids(store, campaign_id)) - set(already)
    assert set(received.values()) == {1}
    assert store.campaigns.get(campaign_id)["lease_run_id"] is None


def test_claim_respects_a_live_lease_held_by_a_run_this_instance_does_not_know(
    store: CampaignStore,
    instance: dg.DagsterInstance,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: object,
) -> None:
    """A run of another DAGSTER_HOME may be sending: wait for its lease to expire, then go."""
    campaign_id = add_campaign(store, recipients=3)
    stranger = str(uuid.uuid4())
    store.claims.claim(campaign_id, stranger, lease_seconds=300)
    queue = make_sqs_queue(fifo=False)

    refused = first_run(instance, store, queue, campaign_id)
    assert not refused.success
    assert drain(sqs_client, queue.queue_url) == []
    assert store.campaigns.get(campaign_id)["lease_run_id"] == stranger

    store.claims.claim(campaign_id, stranger, lease_seconds=0.001)  # the stranger's lease runs out
    time.sleep(0.01)
    assert first_run(instance, store, queue, campaign_id).success
    assert len(drain(sqs_client, queue.queue_url)) == 3


def test_claim_stays_busy_while_the_lease_holder_is_in_progress(
    store: CampaignStore,
    instance: dg.DagsterInstance,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: object,
) -> None:
    """A second run fails at the claim while the holder runs; its failure is not recorded."""
    campaign_id = add_campaign(store, recipients=3)
    holder = instance.create_run_for_job(
        process_campaign_messages, run_config=campaign_run_config(campaign_id)
    )
    store.claims.claim(campaign_id, holder.run_id, lease_seconds=300)
    queue = make_sqs_queue(fifo=False)

    duplicate = first_run(instance, store, queue, campaign_id)
    assert not duplicate.success
    (event,) = duplicate.get_step_failure_events()
    assert f"is being processed by run {holder.run_id}" in (
        event.step_failure_data.user_failure_data.description
    )
    record_failure(instance, store, duplicate)
    campaign = store.campaigns.get(campaign_id)
    assert (campaign["last_error"], campaign["lease_run_id"]) == (None, holder.run_id)
    assert drain(sqs_client, queue.queue_url) == []


def test_reexecution_from_failure_claims_the_campaign_for_itself(
    postgres_store: CampaignStore,
    postgres_url: str,
    instance: dg.DagsterInstance,
    make_queue: Callable[..., str],
    sqs_endpoint: str,
    sqs_client: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Re-executing from failure reuses the old claim: the send step takes the lease itself."""
    campaign_id = add_campaign(postgres_store, recipients=12)
    queue_url = make_queue(fifo=False)
    monkeypatch.setenv("CAMPAIGN_DATABASE_URL", postgres_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", sqs_endpoint)
    monkeypatch.setenv("AWS_SQS_QUEUE_URL", queue_url + "-missing")
    job = dg.reconstructable(definitions_job)
    with dg.execute_job(
        job, instance=instance, run_config=campaign_run_config(campaign_id)
    ) as failed:
        assert not failed.success
    assert postgres_store.audience.counts(campaign_id)["pending"] == 12

    # Another run holds the campaign now: the re-execution must not send.
    other = instance.create_run_for_job(
        process_campaign_messages, run_config=campaign_run_config(campaign_id)
    )
    postgres_store.claims.claim(campaign_id, other.run_id, lease_seconds=300)
    monkeypatch.setenv("AWS_SQS_QUEUE_URL", queue_url)
    options = dg.ReexecutionOptions.from_failure(failed.run_id, instance)
    with dg.execute_job(job, instance=instance, reexecution_options=options) as refused:
        assert not refused.success
    assert drain(sqs_client, queue_url) == []

    instance.report_run_failed(instance.get_run_by_id(other.run_id))
    with dg.execute_job(job, instance=instance, reexecution_options=options) as again:
        assert again.success
        assert "claim_campaign" not in {e.step_key for e in again.get_step_success_events()}
    received = counts_per_recipient(sqs_client, queue_url)
    assert len(received) == 12
    assert set(received.values()) == {1}
    campaign = postgres_store.campaigns.get(campaign_id)
    assert (campaign["queued_count"], campaign["lease_run_id"]) == (12, None)


def test_run_metadata_shows_what_each_run_queued_and_failed(
    sqlite_store: CampaignStore,
    instance: dg.DagsterInstance,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: object,
) -> None:
    """complete_campaign reports this run's queued and failed counts and why, and the totals."""
    campaign_id = add_campaign(sqlite_store, recipients=4)
    sqlite_store.campaigns.add_recipients(
        campaign_id, [{"phone_number": "5551234567", "name": "bad"}]
    )
    queue = make_sqs_queue(fifo=False)
    result = first_run(instance, sqlite_store, queue, campaign_id)
    assert result.success
    (metadata,) = [
        event.event_specific_data.metadata
        for event in result.all_node_events
        if event.event_type == dg.DagsterEventType.STEP_OUTPUT
        and event.step_key == "complete_campaign"
    ]
    assert metadata["queued_this_run"].value == 4
    assert metadata["failed_this_run"].value == 1
    assert "must start with '+'" in metadata["failed_by_reason"].value
    assert metadata["ready_to_send"].value == 4
    assert metadata["resumed"].value is False
    assert "5551234567" not in " ".join(str(event) for event in result.all_events)
    drain(sqs_client, queue.queue_url)
