"""Each of the three places that pause a terminated run's campaign, on its own.

Terminate (the UI, GraphQL `terminateRun`, Ctrl-C on `process`) must leave the campaign paused,
so no sensor starts it again. The send op pauses it when the interrupt reaches it; the run-status
sensor when the run ends CANCELED; the recovery sensor when it finds a stalled campaign whose
latest run was canceled (a worker killed outright). The end-to-end test cannot tell which one
did it, so each is tested here with the other two absent.
"""

import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import dagster as dg
import pytest

from campaign_pipeline.defs.jobs import campaign_run_config, process_campaign_messages
from campaign_pipeline.defs.sensors import (
    pause_campaign_of_terminated_run,
    resume_stalled_campaigns_sensor,
)
from campaign_pipeline.defs.tags import campaign_tags
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import SqsQueue
from tests.support.campaigns import add_recipients, add_template_campaign
from tests.support.fault_proxy import Call, FaultProxy
from tests.support.invariant import check_campaign_invariant

RECIPIENTS = 400


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as instance:
        yield instance


def ended_run(
    instance: dg.DagsterInstance, store: CampaignStore, campaign_id: str, *, canceled: bool
) -> dg.DagsterRun:
    """A run of the job for the campaign that claimed it, sent nothing and ended CANCELED (or
    FAILURE); killed outright, its lease was never renewed and expired."""
    run = instance.create_run_for_job(
        process_campaign_messages,
        run_config=campaign_run_config(campaign_id),
        tags=campaign_tags(campaign_id, "org-1"),
    )
    store.claims.claim(campaign_id, run.run_id, lease_seconds=60)
    store.claims.release(campaign_id, run.run_id)
    if canceled:
        instance.report_run_canceled(run)
    else:
        instance.report_run_failed(run)
    ended = instance.get_run_by_id(run.run_id)
    expected = dg.DagsterRunStatus.CANCELED if canceled else dg.DagsterRunStatus.FAILURE
    assert ended is not None and ended.status == expected
    return ended


def assert_paused_for(store: CampaignStore, campaign_id: str, run_id: str) -> None:
    campaign = store.campaigns.get(campaign_id)
    assert campaign is not None
    assert (campaign["status"], campaign["paused_by"]) == (
        "paused",
        f"Dagster: run {run_id} was terminated",
    )


def test_the_recovery_sensor_pauses_a_stalled_campaign_whose_run_was_terminated(
    sqlite_store: CampaignStore, instance: dg.DagsterInstance
) -> None:
    """A stalled campaign whose latest run is CANCELED is paused, not resumed."""
    store = sqlite_store
    campaign_id = add_template_campaign(store)
    add_recipients(store, campaign_id, 3)
    run = ended_run(instance, store, campaign_id, canceled=True)
    with dg.build_sensor_context(instance=instance, resources={"campaign_store": store}) as context:
        result = resume_stalled_campaigns_sensor(context)
    assert isinstance(result, dg.SkipReason), result
    assert_paused_for(store, campaign_id, run.run_id)
    assert store.campaigns.get(campaign_id)["resume_attempts"] == 0


def test_the_recovery_sensor_resumes_the_same_campaign_after_a_failed_run(
    sqlite_store: CampaignStore, instance: dg.DagsterInstance
) -> None:
    """The control: the same stall after a FAILED run is resumed (the test above is not vacuous)."""
    store = sqlite_store
    campaign_id = add_template_campaign(store)
    add_recipients(store, campaign_id, 3)
    ended_run(instance, store, campaign_id, canceled=False)
    with dg.build_sensor_context(instance=instance, resources={"campaign_store": store}) as context:
        result = resume_stalled_campaigns_sensor(context)
    assert isinstance(result, dg.SensorResult), result
    assert [request.tags["campaign_id"] for request in result.run_requests] == [campaign_id]


def test_the_run_status_sensor_pauses_the_campaign_of_a_canceled_run(
    sqlite_store: CampaignStore, instance: dg.DagsterInstance
) -> None:
    """The CANCELED run-status sensor pauses the campaign, naming the run."""
    store = sqlite_store
    campaign_id = add_template_campaign(store)
    add_recipients(store, campaign_id, 3)
    run = ended_run(instance, store, campaign_id, canceled=True)
    (record,) = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_CANCELED)
    with dg.build_run_status_sensor_context(
        sensor_name=pause_campaign_of_terminated_run.name,
        dagster_event=record.dagster_event,
        dagster_instance=instance,
        dagster_run=run,
        resources={"campaign_store": store},
    ) as context:
        pause_campaign_of_terminated_run(context)
    assert_paused_for(store, campaign_id, run.run_id)


def test_the_send_op_pauses_its_campaign_when_the_run_is_interrupted(
    postgres_store: CampaignStore,
    sqs_endpoint: str,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: Any,
    instance: dg.DagsterInstance,
) -> None:
    """SIGINT to the run's main thread mid-send (Ctrl-C on `process`; Terminate's signal): the
    op itself pauses the campaign, records what was in flight and lets the interrupt end the
    run. No sensor runs here."""
    store = postgres_store
    campaign_id = add_template_campaign(store)
    add_recipients(store, campaign_id, RECIPIENTS)
    main = threading.main_thread().ident
    assert main is not None and threading.get_ident() == main
    sent = threading.Event()

    def interrupt_at_the_fifth_batch(call: Call, stage: str) -> None:
        if (call.action, call.number, stage) == ("SendMessageBatch", 5, "received"):
            sent.set()

    def interrupt() -> None:
        if sent.wait(60):
            signal.pthread_kill(main, signal.SIGINT)

    interrupter = threading.Thread(target=interrupt)
    with FaultProxy(sqs_endpoint, delay_seconds=0.05, hook=interrupt_at_the_fifth_batch) as proxy:
        queue = make_sqs_queue(fifo=True, endpoint=proxy.url, max_concurrent_batches=4)
        interrupter.start()
        started = time.monotonic()
        with pytest.raises((KeyboardInterrupt, dg.DagsterExecutionInterruptedError)):
            process_campaign_messages.execute_in_process(
                run_config=campaign_run_config(campaign_id, outcomes_per_write=10),
                resources={"campaign_store": store, "sqs_queue": queue},
                instance=instance,
                tags=campaign_tags(campaign_id, "org-1"),
            )
        interrupter.join()
        proxy.wait_idle()
    assert time.monotonic() - started < 30
    assert proxy.calls["SendMessageBatch"] < RECIPIENTS // 10
    (run,) = instance.get_runs()
    assert_paused_for(store, campaign_id, run.run_id)
    assert store.campaigns.get(campaign_id)["lease_run_id"] is None
    report = check_campaign_invariant(
        store, campaign_id, sqs_client, queue.queue_url, fifo=True, expect_pending_allowed=True
    )
    # The calls in flight when the interrupt came were answered and recorded.
    assert report.pending_in_queue == []
    assert report.pending > 0 and report.queued > 0
