"""Faults injected while campaigns are sent, and the campaign invariant after each.

SQS faults come from `tests/support/fault_proxy.py` in front of moto's server: whole calls
throttled, failed with 500/503, timed out or reset (before SQS stored the batch, or after: the
lost reply); batch entries failed with sender and server faults; SQS down past the retry budget.
Around the run: the run's process killed with SIGKILL mid-send, its database connections
terminated from PostgreSQL's side mid-write, two runs of one campaign started at the same
instant, and the sensor ticking while a run sends. Everything real: moto over HTTP, PostgreSQL
(SQLite where cheap), Dagster instances on disk, subprocesses. Seeded patterns make each
scenario fault the same batches on every run.

Every scenario ends with `check_campaign_invariant` and writes one record to $RELIABILITY_LOG
(`tests/support/reliability_log.py`), which `scripts/reliability_report.py` turns into
`docs/reliability.md`.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
import sqlalchemy as sa

from campaign_pipeline.defs.jobs import campaign_run_config, process_campaign_messages
from campaign_pipeline.defs.sensors import (
    asset_generated_campaigns_sensor,
    resume_stalled_campaigns_sensor,
)
from campaign_pipeline.defs.tags import campaign_tags
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import SqsQueue
from campaign_pipeline.sending.outcomes import WRITES_IN_FLIGHT
from campaign_pipeline.sending.stats import SendStats, merge_stats
from campaign_pipeline.store.schema import campaign_audience
from tests.support.fault_proxy import (
    INJECTED_REASON,
    Call,
    Fault,
    FaultProxy,
    draw,
    outage,
    random_entry_faults,
    random_faults,
)
from tests.support.invariant import check_campaign_invariant, drain_queue
from tests.support.reliability_log import duplicates, log_scenario

ORGANIZATION_ID = "123e4567-e89b-12d3-a456-426614174000"
AUDIENCE_NAMESPACE = uuid.UUID("6f1d8a52-3c1e-4d7a-9a51-0b8e2f4c7d10")
# The client gives up reading after READ_TIMEOUT; a timeout fault holds the reply for HOLD.
READ_TIMEOUT = 1.5
HOLD = 2.0
# SendMessageBatch takes ten entries: the most one lost reply can leave in the queue unrecorded.
BATCH = 10
REPO = Path(__file__).resolve().parents[2]
# Dagster's console log line when a child's claim step has ended, either way.
CLAIM_DONE = re.compile(r"claim_campaign - STEP_(SUCCESS|FAILURE)")
VARYING = [
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"), "<id>"),
    (re.compile(r" \(its lease runs until [^)]*\)"), ""),
    (re.compile(r"http://127\.0\.0\.1:\d+/?"), "<endpoint>"),
    (re.compile(r" CONTEXT: .*"), ""),
    (re.compile(r" \(reached max retries: \d+\)"), ""),
    (re.compile(r"\. Recipients without an outcome stay pending for a rerun\."), ""),
]

# Runs the job as `campaign-pipeline process` does, in its own process and in $DAGSTER_HOME's
# instance, with the outcome window and concurrency of the scenario. With a sync directory, it
# says it is ready there once Dagster is imported and starts when told to, so that two children
# start at the same instant.
CHILD = """
import json, os, sys, time
import dagster as dg
from campaign_pipeline.sending.stats import merge_stats
from campaign_pipeline.defs.jobs import campaign_run_config, process_campaign_messages
from campaign_pipeline.defs.tags import campaign_tags
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import SqsQueue

database_url, queue_url, endpoint, campaign_id, per_write, batches, sync = sys.argv[1:]
store = CampaignStore(database_url=database_url)
queue = SqsQueue(
    queue_url=queue_url,
    region_name="us-east-1",
    endpoint_url=endpoint,
    max_concurrent_batches=int(batches),
)
with dg.DagsterInstance.get() as instance:
    if sync:
        open(os.path.join(sync, f"ready-{os.getpid()}"), "w").close()
        while not os.path.exists(os.path.join(sync, "go")):
            time.sleep(0.002)
    result = process_campaign_messages.execute_in_process(
        run_config=campaign_run_config(campaign_id, outcomes_per_write=int(per_write)),
        resources={"campaign_store": store, "sqs_queue": queue},
        instance=instance,
        tags=campaign_tags(campaign_id, None),
        raise_on_error=False,
    )
    failures = [
        event.step_failure_data.user_failure_data.description
        if event.step_failure_data.user_failure_data
        else event.step_failure_data.error.message
        for event in result.get_step_failure_events()
    ]
    queued = (
        merge_stats(result.output_for_node("send_campaign_messages").values()).queued
        if result.success
        else 0
    )
    print(json.dumps({"run_id": result.run_id, "success": result.success,
                      "failure": " ".join(failures), "queued": queued}))
"""


def audience_id(seed: int, index: int) -> str:
    """A recipient id fixed by the seed, so seeded faults hit the same recipients every time."""
    return str(uuid.uuid5(AUDIENCE_NAMESPACE, f"{seed}:{index}"))


def add_campaign(store: CampaignStore, recipients: int, seed: int, invalid: int = 0) -> str:
    campaign_id = store.campaigns.add(
        organization_id=ORGANIZATION_ID,
        name=f"faults {seed}",
        status="asset_generated",
        message_type="text",
        message_content="Hi {{name}}",
    )
    store.campaigns.add_recipients(
        campaign_id,
        [
            {"id": audience_id(seed, i), "phone_number": f"+1555{i:07d}", "name": f"R{i}"}
            for i in range(recipients)
        ]
        + [
            {"id": audience_id(seed, recipients + i), "phone_number": f"555{i:07d}"}
            for i in range(invalid)
        ],
    )
    return campaign_id


def run_job(
    store: CampaignStore,
    queue: SqsQueue,
    campaign_id: str,
    instance: dg.DagsterInstance | None = None,
    **config: Any,
) -> dg.ExecuteInProcessResult:
    """The job as the sensor starts it (its run config and tags), in this process."""
    return process_campaign_messages.execute_in_process(
        run_config=campaign_run_config(campaign_id, **config),
        resources={"campaign_store": store, "sqs_queue": queue},
        instance=instance,
        tags=campaign_tags(campaign_id, ORGANIZATION_ID),
        raise_on_error=False,
    )


def sent(result: dg.ExecuteInProcessResult) -> SendStats:
    return merge_stats(result.output_for_node("send_campaign_messages").values())


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    """Every failed step's description, or its error when it raised."""
    parts = []
    for event in result.get_step_failure_events():
        data = event.step_failure_data
        if data.user_failure_data is not None and data.user_failure_data.description:
            parts.append(data.user_failure_data.description)
        elif (error := data.error) is not None:
            while error.cls_name == "DagsterExecutionStepExecutionError" and error.cause:
                error = error.cause
            parts.append(error.message.strip())
    return " ".join(parts)


def outcome(result: dg.ExecuteInProcessResult | dict[str, Any]) -> str:
    """One line for the report: the run succeeded, or why it failed."""
    if isinstance(result, dict):
        success, message = result["success"], result["failure"]
    else:
        success, message = result.success, failure_message(result)
    if success:
        return "succeeded"
    # Ids, times and ports differ on every run of the tests; the report shows where they were.
    text = " ".join(message.split())
    for pattern, placeholder in VARYING:
        text = pattern.sub(placeholder, text)
    if len(text) > 150:
        text = text[:150].rsplit(" ", 1)[0] + " …"
    return "failed: " + text


# The proxy itself: each fault reaches botocore as the error SQS would cause


@pytest.mark.parametrize("fault", list(Fault), ids=lambda fault: fault.name.lower())
def test_each_fault_reaches_the_client_as_sqs_would_cause_it(
    fault: Fault,
    sqs_endpoint: str,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: Any,
) -> None:
    """With one attempt each fault is the client's error; only after-store ones queue messages."""
    expected = {
        Fault.THROTTLED: "RequestThrottled",
        Fault.THROTTLING_EXCEPTION: "ThrottlingException",
        Fault.INTERNAL_ERROR: "InternalFailure",
        Fault.SERVICE_UNAVAILABLE: "ServiceUnavailable",
        Fault.TIMEOUT: "Read timeout",
        Fault.TIMEOUT_AFTER_FORWARD: "Read timeout",
        Fault.RESET: "Connection was closed",
        Fault.RESET_AFTER_FORWARD: "Connection was closed",
    }
    with FaultProxy(sqs_endpoint, fault=outage([fault]), hold_seconds=1.0) as proxy:
        queue = make_sqs_queue(
            fifo=False, endpoint=proxy.url, max_attempts=1, read_timeout_seconds=0.5
        )
        result = queue.batch_queue().send_batch(
            "c", ["a0", "a1", "a2"], ['{"n": 0}', '{"n": 1}', '{"n": 2}']
        )
        proxy.wait_idle()
    assert expected[fault] in str(result.error)
    assert not result.accepted_ids
    stored = drain_queue(sqs_client, queue.queue_url)
    assert len(stored) == (3 if fault.after_forward else 0)
    assert proxy.unanswered_entries == len(stored)
    assert proxy.injected == {fault.value: 1}


def test_fifo_resend_is_dropped_and_answered_with_the_first_message_id(
    sqs_endpoint: str, make_sqs_queue: Callable[..., SqsQueue], sqs_client: Any
) -> None:
    """As SQS: a resend within five minutes gets the first id, even after the first was deleted."""
    with FaultProxy(sqs_endpoint) as proxy:
        queue = make_sqs_queue(fifo=True, endpoint=proxy.url)
        first = queue.batch_queue().send_batch("c", ["a0", "a1"], ['{"n": 0}', '{"n": 1}'])
        stored = {m["Body"]: m["MessageId"] for m in drain_queue(sqs_client, queue.queue_url)}
        again = queue.batch_queue().send_batch("c", ["a0", "a2"], ['{"n": 0}', '{"n": 2}'])
    first_ids = dict(zip(first.accepted_ids, first.message_ids, strict=True))
    again_ids = dict(zip(again.accepted_ids, again.message_ids, strict=True))
    assert again_ids["a0"] == first_ids["a0"] == stored['{"n": 0}']
    assert [m["Body"] for m in drain_queue(sqs_client, queue.queue_url)] == ['{"n": 2}']
    assert proxy.deduplicated_entries == 1


def test_seeded_patterns_do_not_depend_on_the_order_of_calls() -> None:
    """The same batch and attempt get the same fault whatever call number they arrive as."""
    pattern = random_faults(7, {Fault.SERVICE_UNAVAILABLE: 0.5, Fault.RESET: 0.2})
    calls = [Call("SendMessageBatch", n, 1 + n % 3, (f"id{n % 50}",)) for n in range(1, 300)]
    decisions = {(c.entry_ids, c.attempt): pattern(c) for c in calls}
    shuffled = [Call(c.action, 1000 + c.number, c.attempt, c.entry_ids) for c in reversed(calls)]
    assert all(pattern(c) == decisions[(c.entry_ids, c.attempt)] for c in shuffled)
    assert {Fault.SERVICE_UNAVAILABLE, Fault.RESET, None} == set(decisions.values())
    assert (
        random_faults(7, {Fault.RESET: 1.0}, attempts=2)(Call("SendMessageBatch", 1, 3, ())) is None
    )
    assert draw(1, "x") == draw(1, "x") != draw(2, "x")


# Whole calls: throttling, 500 and 503, timeouts and resets, each retried by botocore

CALL_FAULTS = [
    pytest.param(Fault.THROTTLED, False, id="throttled-standard"),
    pytest.param(Fault.THROTTLING_EXCEPTION, True, id="throttling_exception-fifo"),
    pytest.param(Fault.INTERNAL_ERROR, False, id="500-standard"),
    pytest.param(Fault.SERVICE_UNAVAILABLE, True, id="503-fifo"),
    pytest.param(Fault.TIMEOUT, False, id="timeout-standard"),
    pytest.param(Fault.RESET, False, id="reset-standard"),
    pytest.param(Fault.TIMEOUT_AFTER_FORWARD, False, id="timeout_after_store-standard"),
    pytest.param(Fault.TIMEOUT_AFTER_FORWARD, True, id="timeout_after_store-fifo"),
    pytest.param(Fault.RESET_AFTER_FORWARD, False, id="reset_after_store-standard"),
    pytest.param(Fault.RESET_AFTER_FORWARD, True, id="reset_after_store-fifo"),
]
CALL_FAULT_RATE = 0.3
CALL_FAULT_ATTEMPTS = 3


@pytest.mark.parametrize(("fault", "fifo"), CALL_FAULTS)
def test_call_faults_are_retried_and_every_recipient_lands(
    fault: Fault,
    fifo: bool,
    sqs_endpoint: str,
    postgres_store: CampaignStore,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: Any,
) -> None:
    """30% of batch attempts fail (3 at most a batch): all queued; lost replies resent, counted."""
    seed = 11
    campaign_id = add_campaign(postgres_store, 100, seed)
    pattern = random_faults(seed, {fault: CALL_FAULT_RATE}, attempts=CALL_FAULT_ATTEMPTS)
    with FaultProxy(sqs_endpoint, fault=pattern, hold_seconds=HOLD) as proxy:
        queue = make_sqs_queue(
            fifo=fifo,
            endpoint=proxy.url,
            max_concurrent_batches=4,
            read_timeout_seconds=READ_TIMEOUT,
        )
        result = run_job(postgres_store, queue, campaign_id)
        proxy.wait_idle()
    assert result.success, failure_message(result)
    report = check_campaign_invariant(
        postgres_store,
        campaign_id,
        sqs_client,
        queue.queue_url,
        fifo=fifo,
        max_duplicates=proxy.unanswered_entries,
    )
    assert report.queued == 100
    assert proxy.injected[fault.value] >= 3
    if fault.after_forward:
        assert proxy.unanswered_entries >= BATCH
    # Each lost reply is one extra copy on a standard queue; on FIFO its resends are dropped.
    if fifo:
        assert proxy.deduplicated_entries >= proxy.unanswered_entries
    else:
        assert duplicates(report) == proxy.unanswered_entries
    log_scenario(
        f"{fault.value}",
        group="SQS call faults",
        fifo=fifo,
        store=postgres_store,
        injected=f"{fault.value} on {CALL_FAULT_RATE:.0%} of SendMessageBatch attempts "
        f"(at most {CALL_FAULT_ATTEMPTS} per batch; botocore standard retries, 5 attempts)",
        proxy=proxy,
        report=report,
        runs=[outcome(result)],
        duplicate_bound=proxy.unanswered_entries,
    )


def test_lost_replies_on_fifo_are_dropped_by_the_endpoint_itself(
    sqs_endpoint: str,
    postgres_store: CampaignStore,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: Any,
) -> None:
    """The proxy's own deduplication off and nothing drained until the end: the resends of
    lost replies meet their first messages still queued, and moto itself drops them.

    moto answers such a resend with a new message id where SQS answers with the first one's,
    so only the recipients whose reply was lost may have an id the queue does not hold.
    """
    seed = 11
    campaign_id = add_campaign(postgres_store, 100, seed)
    pattern = random_faults(
        seed, {Fault.RESET_AFTER_FORWARD: CALL_FAULT_RATE}, attempts=CALL_FAULT_ATTEMPTS
    )
    with FaultProxy(
        sqs_endpoint, fault=pattern, hold_seconds=HOLD, sqs_deduplication_ids=False
    ) as proxy:
        queue = make_sqs_queue(fifo=True, endpoint=proxy.url, max_concurrent_batches=4)
        result = run_job(postgres_store, queue, campaign_id)
        proxy.wait_idle()
    assert result.success, failure_message(result)
    assert proxy.unanswered_entries >= BATCH and proxy.deduplicated_entries == 0
    messages = drain_queue(sqs_client, queue.queue_url)
    copies = Counter(json.loads(m["Body"])["campaignAudienceId"] for m in messages)
    assert len(copies) == 100 and set(copies.values()) == {1}  # nothing twice
    assert postgres_store.audience.counts(campaign_id) == {
        "pending": 0,
        "ready_to_send": 100,
        "failed": 0,
    }
    with postgres_store.engine.connect() as connection:
        recorded = connection.execute(
            sa.select(campaign_audience.c.id, campaign_audience.c.sqs_message_id).where(
                campaign_audience.c.campaign_id == campaign_id
            )
        ).all()
    queued_ids = {m["MessageId"] for m in messages}
    assert {row.id for row in recorded} == set(copies)
    assert sum(row.sqs_message_id not in queued_ids for row in recorded) <= (
        proxy.unanswered_entries
    )


# Entries failed inside an HTTP 200, as SQS reports partial batch failures

PERMANENT_CODES = {"InvalidParameterValue", "InvalidMessageContents"}
ENTRY_FAULTS = {
    ("RequestThrottled", True): 0.10,
    ("ThrottlingException", True): 0.05,
    ("KMS.ThrottlingException", True): 0.03,
    ("InternalError", False): 0.10,
    ("ServiceUnavailable", False): 0.05,
    ("InvalidParameterValue", True): 0.04,
    ("InvalidMessageContents", True): 0.03,
}


# What the test knows as throttling codes, independent of the resource's own list.
THROTTLING = {"RequestThrottled", "ThrottlingException", "KMS.ThrottlingException"}


def expected_entry_failures(
    fault: Callable[[dict[str, Any], int], tuple[str, bool] | None],
    ids: list[str],
    max_entry_retries: int,
) -> dict[str, str]:
    """Which entries end `failed`, and why, by SQS's rules: sender faults are final unless
    they are throttling, everything else is resent until the retries run out."""
    failed = {}
    for id_ in ids:
        for attempt in range(1, max_entry_retries + 2):
            result = fault({"Id": id_}, attempt)
            if result is None:
                break
            code, sender = result
            if (sender and code not in THROTTLING) or attempt == max_entry_retries + 1:
                failed[id_] = f"SQS rejected the message ({code}): {INJECTED_REASON}"
                break
    return failed


@pytest.mark.parametrize(
    ("database", "fifo", "max_entry_retries"),
    [
        pytest.param("postgres", True, 5, id="postgres-fifo"),
        pytest.param("postgres", False, 5, id="postgres-standard"),
        pytest.param("sqlite", True, 1, id="sqlite-fifo-one_retry"),
    ],
)
def test_partial_batch_failures_fail_exactly_the_rejected_entries(
    database: str,
    fifo: bool,
    max_entry_retries: int,
    request: pytest.FixtureRequest,
    sqs_endpoint: str,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: Any,
) -> None:
    """Sender faults fail their entry with SQS's code; throttling and server faults are resent."""
    store: CampaignStore = request.getfixturevalue(f"{database}_store")
    seed = 23
    campaign_id = add_campaign(store, 120, seed)
    fault = random_entry_faults(seed, ENTRY_FAULTS, content_codes=PERMANENT_CODES)
    expected = expected_entry_failures(
        fault, [audience_id(seed, i) for i in range(120)], max_entry_retries
    )
    with FaultProxy(sqs_endpoint, entry_fault=fault) as proxy:
        queue = make_sqs_queue(
            fifo=fifo,
            endpoint=proxy.url,
            max_concurrent_batches=4,
            retry_base_seconds=0.01,
            retry_cap_seconds=0.05,
            max_entry_retries=max_entry_retries,
        )
        result = run_job(store, queue, campaign_id)
    assert result.success, failure_message(result)
    report = check_campaign_invariant(store, campaign_id, sqs_client, queue.queue_url, fifo=fifo)
    assert report.failure_reasons == expected
    assert report.queued == 120 - len(expected)
    exhausted = [r for r in expected.values() if not any(c in r for c in PERMANENT_CODES)]
    # The scenario with one resend has entries failed for good by a passing fault.
    assert bool(exhausted) == (max_entry_retries == 1)
    assert sent(result).retried_entries > 0
    log_scenario(
        "partial batch failures",
        group="SQS entry faults",
        fifo=fifo,
        store=store,
        injected="Failed entries in HTTP 200: throttling codes as sender faults (18%), server "
        "faults (15%), permanent sender faults (6%), per entry attempt; "
        f"{max_entry_retries} entry resends",
        proxy=proxy,
        report=report,
        runs=[outcome(result)],
        failure_reasons=dict(report.reasons),
    )


# Everything at once, at random, until the campaign is done


@pytest.mark.parametrize("fifo", [False, True], ids=["standard", "fifo"])
def test_random_mix_of_faults_loses_nothing_and_doubles_only_lost_replies(
    fifo: bool,
    sqs_endpoint: str,
    postgres_store: CampaignStore,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: Any,
) -> None:
    """Every fault kind at random, entry faults too: reruns until nothing is pending."""
    seed = 31
    campaign_id = add_campaign(postgres_store, 300, seed, invalid=3)
    rates = dict.fromkeys(Fault, 0.04)
    entry_rates = {
        ("RequestThrottled", True): 0.05,
        ("InternalError", False): 0.05,
        ("InvalidParameterValue", True): 0.01,
    }
    runs = []
    messages: list[dict[str, Any]] = []
    with FaultProxy(
        sqs_endpoint,
        fault=random_faults(seed, rates),
        entry_fault=random_entry_faults(seed, entry_rates, content_codes={"InvalidParameterValue"}),
        hold_seconds=HOLD,
    ) as proxy:
        queue = make_sqs_queue(
            fifo=fifo,
            endpoint=proxy.url,
            max_concurrent_batches=8,
            read_timeout_seconds=READ_TIMEOUT,
            retry_base_seconds=0.01,
            max_attempts=4,
        )
        for _ in range(5):
            result = run_job(postgres_store, queue, campaign_id, outcomes_per_write=50)
            proxy.wait_idle()
            runs.append(outcome(result))
            if result.success:
                break
            # Judged against every message drained so far: a recipient queued by an earlier
            # run left the queue at that run's check (two failed runs in a row once failed
            # the check here, with every earlier recipient "not in the queue").
            messages += drain_queue(sqs_client, queue.queue_url)
            check_campaign_invariant(
                postgres_store,
                campaign_id,
                sqs_client,
                queue.queue_url,
                fifo=fifo,
                expect_pending_allowed=True,
                max_duplicates=proxy.unanswered_entries,
                messages=messages,
            )
            assert "SQS failed past its retries" in failure_message(result)
    assert result.success, runs
    report = check_campaign_invariant(
        postgres_store,
        campaign_id,
        sqs_client,
        queue.queue_url,
        fifo=fifo,
        max_duplicates=proxy.unanswered_entries,
        messages=messages + drain_queue(sqs_client, queue.queue_url),
    )
    assert sum(proxy.injected[f.value] for f in Fault) >= 10
    assert report.queued + report.failed == 303
    assert set(report.reasons) <= {
        "phone number must start with '+' (E.164)",
        f"SQS rejected the message (InvalidParameterValue): {INJECTED_REASON}",
        f"SQS rejected the message (RequestThrottled): {INJECTED_REASON}",
        f"SQS rejected the message (InternalError): {INJECTED_REASON}",
    }
    if fifo:
        assert duplicates(report) == 0
    log_scenario(
        "random mix of every fault",
        group="SQS call and entry faults",
        fifo=fifo,
        store=postgres_store,
        injected="each of the 8 call faults on 4% of batch attempts (32% in all), entry "
        "faults on 11% of entry attempts; 4 attempts per call; 3 invalid phone numbers",
        proxy=proxy,
        report=report,
        runs=runs,
        duplicate_bound=proxy.unanswered_entries,
    )


# SQS down for longer than the retry budget

OUTAGES = [
    pytest.param(False, [Fault.SERVICE_UNAVAILABLE], id="503-standard"),
    pytest.param(False, [Fault.RESET_AFTER_FORWARD, Fault.SERVICE_UNAVAILABLE], id="lost-standard"),
    pytest.param(True, [Fault.RESET_AFTER_FORWARD, Fault.THROTTLED, Fault.TIMEOUT], id="lost-fifo"),
]


@pytest.mark.parametrize(("fifo", "faults"), OUTAGES)
def test_outage_past_the_retry_budget_fails_the_run_and_a_rerun_completes(
    fifo: bool,
    faults: list[Fault],
    sqs_endpoint: str,
    postgres_store: CampaignStore,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: Any,
) -> None:
    """From the 4th batch call on SQS fails every attempt: the run fails saying so, what SQS
    confirmed is recorded, the rest stays pending; a rerun sends only the rest."""
    seed = 41
    campaign_id = add_campaign(postgres_store, 100, seed)
    with FaultProxy(sqs_endpoint, fault=outage(faults, after_calls=3), hold_seconds=HOLD) as proxy:
        queue = make_sqs_queue(
            fifo=fifo,
            endpoint=proxy.url,
            max_concurrent_batches=2,
            max_attempts=3,
            read_timeout_seconds=READ_TIMEOUT,
        )
        started = time.monotonic()
        failed_run = run_job(postgres_store, queue, campaign_id, outcomes_per_write=10)
        seconds = time.monotonic() - started
        proxy.wait_idle()
        first = check_campaign_invariant(
            postgres_store,
            campaign_id,
            sqs_client,
            queue.queue_url,
            fifo=fifo,
            expect_pending_allowed=True,
            max_duplicates=proxy.unanswered_entries,
        )
        lost = proxy.unanswered_entries
        proxy.fault = None
        rerun = run_job(postgres_store, queue, campaign_id)
    assert not failed_run.success
    message = failure_message(failed_run)
    assert "SQS failed past its retries" in message
    assert "Recipients without an outcome stay pending for a rerun" in message
    assert (first.queued, first.pending) == (30, 70)
    # Batches SQS stored whose reply was lost stay pending, their messages already queued
    # (twice on a standard queue when two attempts' replies were lost).
    assert len(first.messages) - first.queued == lost
    assert len(first.pending_in_queue) * (1 if fifo else 2) == lost
    assert (lost >= BATCH) if faults[0].after_forward else (lost == 0)
    assert rerun.success, failure_message(rerun)
    report = check_campaign_invariant(
        postgres_store,
        campaign_id,
        sqs_client,
        queue.queue_url,
        fifo=fifo,
        max_duplicates=lost,
        messages=first.messages + drain_queue(sqs_client, queue.queue_url),
    )
    assert report.queued == 100
    assert duplicates(report) == (0 if fifo else lost)
    assert proxy.deduplicated_entries == (lost if fifo else 0)
    log_scenario(
        "SQS down past the retry budget, then a rerun",
        group="SQS outage",
        fifo=fifo,
        store=postgres_store,
        injected="from the 4th SendMessageBatch call on, every attempt fails: "
        + ", then ".join(f.value for f in faults)
        + " (3 attempts per call, 2 calls in flight)",
        proxy=proxy,
        report=report,
        runs=[outcome(failed_run) + f" after {seconds:.1f} s", outcome(rerun)],
        duplicate_bound=lost,
        after_failed_run={
            "queued": first.queued,
            "pending": first.pending,
            "pending_in_queue": len(first.pending_in_queue),
            "copies_of_pending_in_queue": len(first.messages) - first.queued,
        },
    )


# The run's process killed with SIGKILL mid-send, then a rerun


@pytest.fixture
def dagster_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    return home


def start_child(
    dagster_home: Path,
    database_url: str,
    queue: SqsQueue,
    campaign_id: str,
    log: Path,
    *,
    outcomes_per_write: int,
    max_concurrent_batches: int,
    sync: Path | None = None,
) -> subprocess.Popen[str]:
    """The job in a process of its own, on the instance in `dagster_home`; stderr to `log`."""
    with log.open("w") as stderr:
        return subprocess.Popen(
            [
                sys.executable,
                "-c",
                CHILD,
                database_url,
                queue.queue_url,
                queue.endpoint_url or "",
                campaign_id,
                str(outcomes_per_write),
                str(max_concurrent_batches),
                str(sync or ""),
            ],
            env={**os.environ, "DAGSTER_HOME": str(dagster_home), "PYTHONPATH": str(REPO)},
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )


def child_result(child: subprocess.Popen[str], timeout: float = 90) -> dict[str, Any]:
    out, _ = child.communicate(timeout=timeout)
    assert child.returncode == 0, f"the child exited with {child.returncode}"
    return json.loads(out.strip().splitlines()[-1])


KILLS = [
    pytest.param(False, "after-store", 101, id="standard-after_store"),
    pytest.param(False, "before-store", 102, id="standard-before_store"),
    pytest.param(False, "timer", 103, id="standard-timer"),
    pytest.param(True, "after-store", 104, id="fifo-after_store"),
]
KILL_RECIPIENTS = 200
KILL_WINDOW = 20
KILL_CONCURRENCY = 4


@pytest.mark.parametrize(("fifo", "moment", "seed"), KILLS)
def test_run_killed_mid_send_is_completed_by_a_rerun(
    fifo: bool,
    moment: str,
    seed: int,
    sqs_endpoint: str,
    postgres_url: str,
    postgres_store: CampaignStore,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: Any,
    dagster_home: Path,
    tmp_path: Path,
) -> None:
    """SIGKILL at a seeded moment of sending; the lease holds until Dagster marks the run
    failed, then a rerun sends the rest: duplicates only from the crash window, none on FIFO."""
    campaign_id = add_campaign(postgres_store, KILL_RECIPIENTS, seed)
    batches = KILL_RECIPIENTS // BATCH
    kill_at = 2 + int(draw(seed, "kill") * (batches - 6))  # a call well inside the campaign
    children: list[subprocess.Popen[str]] = []
    at_kill: dict[str, int] = {}
    killed = threading.Event()

    def kill() -> None:
        if killed.is_set():
            return
        at_kill["batches_in_flight"] = proxy.in_flight
        at_kill["batch_calls"] = proxy.calls["SendMessageBatch"]
        children[0].send_signal(signal.SIGKILL)
        children[0].wait()
        killed.set()

    def hook(call: Call, phase: str) -> None:
        if call.action != "SendMessageBatch":
            return
        if moment == "timer" and call.number == 1 and phase == "received":
            threading.Timer(0.1 + draw(seed, "timer") * 0.4, kill).start()
        elif call.number == kill_at and phase == {"after-store": "forwarded"}.get(
            moment, "received"
        ):
            kill()

    def fault(call: Call) -> Fault | None:
        # Killed as the request left: SQS never gets that batch.
        if moment == "before-store" and call.number == kill_at:
            return Fault.RESET
        return None

    with FaultProxy(sqs_endpoint, delay_seconds=0.15, hook=hook, fault=fault) as proxy:
        queue = make_sqs_queue(fifo=fifo, endpoint=proxy.url)
        children.append(
            start_child(
                dagster_home,
                postgres_url,
                queue,
                campaign_id,
                tmp_path / "killed.log",
                outcomes_per_write=KILL_WINDOW,
                max_concurrent_batches=KILL_CONCURRENCY,
            )
        )
        children[0].communicate(timeout=90)
        assert killed.is_set() and children[0].returncode == -signal.SIGKILL
        proxy.wait_idle()
        proxy.hook = None
        after_kill = check_campaign_invariant(
            postgres_store,
            campaign_id,
            sqs_client,
            queue.queue_url,
            fifo=fifo,
            expect_pending_allowed=True,
        )
        killed_run_id = postgres_store.campaigns.get(campaign_id)["lease_run_id"]
        with dg.instance_for_test(temp_dir=str(dagster_home)) as instance:
            # Dagster still sees the killed run as started: its lease is respected.
            refused = run_job(postgres_store, queue, campaign_id, instance=instance)
            killed_run = instance.get_run_by_id(killed_run_id)
            assert killed_run is not None and killed_run.status == dg.DagsterRunStatus.STARTED
            # What run monitoring does to a run whose worker died; then the lease can be taken.
            instance.report_run_failed(killed_run)
            rerun = run_job(postgres_store, queue, campaign_id, instance=instance)
    assert not refused.success
    assert f"is being processed by run {killed_run_id}" in failure_message(refused)
    assert rerun.success, failure_message(rerun)
    in_queue_unrecorded = len(after_kill.pending_in_queue)
    # The documented crash window: the windows being written, the one being filled, and the
    # batches in flight.
    window = (WRITES_IN_FLIGHT + 1) * KILL_WINDOW + at_kill["batches_in_flight"] * BATCH
    assert in_queue_unrecorded <= window
    report = check_campaign_invariant(
        postgres_store,
        campaign_id,
        sqs_client,
        queue.queue_url,
        fifo=fifo,
        max_duplicates=in_queue_unrecorded,
        messages=after_kill.messages + drain_queue(sqs_client, queue.queue_url),
    )
    assert report.queued == KILL_RECIPIENTS
    assert duplicates(report) == (0 if fifo else in_queue_unrecorded)
    assert proxy.deduplicated_entries == (in_queue_unrecorded if fifo else 0)
    log_scenario(
        {
            "after-store": "SIGKILL after SQS stored a batch",
            "before-store": "SIGKILL as a batch left",
            "timer": "SIGKILL at a seeded moment",
        }[moment],
        group="process killed",
        fifo=fifo,
        store=postgres_store,
        injected={
            "after-store": f"SIGKILL once SQS stored batch call {kill_at}, before its reply",
            "before-store": f"SIGKILL as batch call {kill_at} left (SQS never got it)",
            "timer": "SIGKILL at a seeded moment 0.1-0.5 s into sending",
        }[moment]
        + f"; {KILL_CONCURRENCY} calls in flight, outcomes written every {KILL_WINDOW}",
        proxy=proxy,
        report=report,
        runs=[
            f"killed at batch call {at_kill['batch_calls']} with "
            f"{at_kill['batches_in_flight']} in flight ({after_kill.queued} recorded, "
            f"{in_queue_unrecorded} queued but unrecorded)",
            outcome(refused),
            "killed run marked failed; " + outcome(rerun),
        ],
        duplicate_bound=window,
        also_injected={"SIGKILL": 1},
    )


# The database connections terminated from PostgreSQL's side while outcomes are written


def terminate_during_a_write(
    postgres_url: str, campaign_id: str, done: dict[str, int], locked: threading.Event
) -> None:
    """Hold the campaign's rows so the next outcome write waits, then terminate every backend
    of the database but this one: the write dies mid-transaction. `locked` is set once the
    rows are held."""
    with (
        psycopg.connect(postgres_url) as locker,
        psycopg.connect(postgres_url, autocommit=True) as killer,
    ):
        locker.execute(
            "SELECT id FROM campaign_audience WHERE campaign_id = %s FOR UPDATE", (campaign_id,)
        )
        locked.set()
        deadline = time.monotonic() + 20
        while not killer.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()[0]:
            assert time.monotonic() < deadline, "no outcome write waited on the held rows"
            time.sleep(0.01)
        done["terminated"] = killer.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid() AND pid <> %s",
            (locker.info.backend_pid,),
        ).fetchone()[0]
        locker.rollback()


@pytest.mark.parametrize("fifo", [False, True], ids=["standard", "fifo"])
def test_database_connections_dropped_mid_write_then_a_rerun(
    fifo: bool,
    sqs_endpoint: str,
    postgres_url: str,
    postgres_store: CampaignStore,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: Any,
) -> None:
    """pg_terminate_backend during an outcome write: the run fails with the database error,
    nothing is recorded that SQS did not take; a rerun completes the campaign."""
    seed = 51
    campaign_id = add_campaign(postgres_store, 200, seed)
    done: dict[str, int] = {}
    cutters: list[threading.Thread] = []

    def hook(call: Call, phase: str) -> None:
        if call.action == "SendMessageBatch" and call.number == 5 and phase == "received":
            locked = threading.Event()
            cutter = threading.Thread(
                target=terminate_during_a_write, args=(postgres_url, campaign_id, done, locked)
            )
            cutter.start()
            cutters.append(cutter)
            # Batch 5 is answered only once the rows are held, so the write of its outcome
            # waits on them however fast the rest of the send goes (it used to finish first
            # on a loaded machine, and no write waited).
            locked.wait(20)

    with FaultProxy(sqs_endpoint, delay_seconds=0.05, hook=hook) as proxy:
        queue = make_sqs_queue(fifo=fifo, endpoint=proxy.url, max_concurrent_batches=4)
        failed_run = run_job(postgres_store, queue, campaign_id, outcomes_per_write=20)
        for cutter in cutters:
            cutter.join(timeout=30)
        first = check_campaign_invariant(
            postgres_store,
            campaign_id,
            sqs_client,
            queue.queue_url,
            fifo=fifo,
            expect_pending_allowed=True,
        )
        proxy.hook = None
        with dg.instance_for_test() as instance:
            rerun = run_job(postgres_store, queue, campaign_id, instance=instance)
    assert done.get("terminated", 0) >= 1
    assert not failed_run.success
    assert "terminating connection due to administrator command" in failure_message(failed_run)
    assert first.pending > 0
    unrecorded = len(first.pending_in_queue)
    window = (WRITES_IN_FLIGHT + 1) * 20 + 4 * BATCH
    assert unrecorded <= window
    assert rerun.success, failure_message(rerun)
    report = check_campaign_invariant(
        postgres_store,
        campaign_id,
        sqs_client,
        queue.queue_url,
        fifo=fifo,
        max_duplicates=unrecorded,
        messages=first.messages + drain_queue(sqs_client, queue.queue_url),
    )
    assert report.queued == 200
    assert duplicates(report) == (0 if fifo else unrecorded)
    assert proxy.deduplicated_entries == (unrecorded if fifo else 0)
    log_scenario(
        "database connections terminated mid-write, then a rerun",
        group="database dropped",
        fifo=fifo,
        store=postgres_store,
        injected="at batch call 5, the campaign's rows held until an outcome write waits, then "
        f"pg_terminate_backend on every other backend ({done['terminated']} terminated)",
        proxy=proxy,
        report=report,
        runs=[
            outcome(failed_run) + f" ({first.queued} recorded, {unrecorded} queued but unrecorded)",
            outcome(rerun),
        ],
        duplicate_bound=window,
        also_injected={"backends terminated": done["terminated"]},
    )


# Two runs of one campaign started at the same instant


@pytest.mark.parametrize(
    ("fifo", "shared_instance"),
    [
        pytest.param(False, True, id="one_instance-standard"),
        pytest.param(True, True, id="one_instance-fifo"),
        # A run of another Dagster instance (`process` from a shell with another DAGSTER_HOME):
        # its claim cannot tell whether the holder is alive, so it must respect the lease.
        pytest.param(False, False, id="two_instances-standard"),
    ],
)
def test_two_runs_started_together_send_each_recipient_once(
    fifo: bool,
    shared_instance: bool,
    sqs_endpoint: str,
    postgres_url: str,
    postgres_store: CampaignStore,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: Any,
    tmp_path: Path,
) -> None:
    """Two processes start the job for one campaign at one instant: one sends, one is refused."""
    seed = 61
    campaign_id = add_campaign(postgres_store, 100, seed)
    homes = [tmp_path / "home_a", tmp_path / ("home_a" if shared_instance else "home_b")]
    logs = [tmp_path / "run_0.log", tmp_path / "run_1.log"]
    for home in homes:
        home.mkdir(exist_ok=True)
        # Create the instance's storage here: two processes creating it at once can collide.
        with dg.instance_for_test(temp_dir=str(home)):
            pass
    sync = tmp_path / "sync"
    sync.mkdir()
    both_claimed = threading.Event()
    # The proxy's handler threads cannot fail the test: they note what went wrong here.
    hook_problems: list[str] = []

    def hook(call: Call, phase: str) -> None:
        # Nothing reaches SQS before both runs have passed their claim: the runs overlap
        # however the two processes are scheduled.
        if call.action != "SendMessageBatch" or both_claimed.is_set():
            return
        deadline = time.monotonic() + 60
        while not all(CLAIM_DONE.search(log.read_text()) for log in logs):
            if time.monotonic() > deadline:
                hook_problems.append("a run never got past its claim")
                break
            time.sleep(0.02)
        both_claimed.set()

    with FaultProxy(sqs_endpoint, delay_seconds=0.1, hook=hook) as proxy:
        queue = make_sqs_queue(fifo=fifo, endpoint=proxy.url)
        children = [
            start_child(
                home,
                postgres_url,
                queue,
                campaign_id,
                log,
                outcomes_per_write=1_000,
                max_concurrent_batches=2,
                sync=sync,
            )
            for home, log in zip(homes, logs, strict=True)
        ]
        # Both import Dagster first (seconds under load), then start at the same instant.
        deadline = time.monotonic() + 90
        while len(list(sync.glob("ready-*"))) < 2:
            assert time.monotonic() < deadline, "the runs never got ready"
            assert all(child.poll() is None for child in children), "a run exited early"
            time.sleep(0.01)
        (sync / "go").touch()
        results = [child_result(child) for child in children]
        proxy.wait_idle()
    assert not hook_problems, hook_problems
    assert both_claimed.is_set(), "no batch reached SQS"
    report = check_campaign_invariant(
        postgres_store, campaign_id, sqs_client, queue.queue_url, fifo=fifo, max_duplicates=100
    )
    log_scenario(
        "two runs started at the same instant",
        group="concurrent runs",
        fifo=fifo,
        store=postgres_store,
        injected="two processes start the job for one campaign at one instant, "
        + ("sharing one Dagster instance" if shared_instance else "each with its own instance"),
        proxy=proxy,
        report=report,
        runs=[outcome(r) for r in results],
    )
    assert both_claimed.is_set()
    assert sorted(r["success"] for r in results) == [False, True], results
    (winner,) = (r for r in results if r["success"])
    (loser,) = (r for r in results if not r["success"])
    assert winner["queued"] == 100
    assert "is being processed by run" in loser["failure"]
    assert report.queued == 100
    assert duplicates(report) == 0
    assert proxy.deduplicated_entries == 0


# The sensor ticking while a run sends


def test_sensor_ticks_during_a_run_request_nothing_for_its_campaign(
    sqs_endpoint: str,
    postgres_store: CampaignStore,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: Any,
    dagster_home: Path,
) -> None:
    """While the sensor's run sends, neither sensor asks for another run of the campaign."""
    seed = 71
    campaign_id = add_campaign(postgres_store, 100, seed)
    ticks: list[str] = []
    ticked = threading.Event()
    # The proxy's handler threads cannot fail the test: they note what went wrong here.
    hook_problems: list[str] = []

    def hook(call: Call, phase: str) -> None:
        # The third batch call waits for the ticks: they happen while the run is sending.
        third = call.action == "SendMessageBatch" and call.number == 3 and phase == "received"
        if third and not ticked.wait(timeout=60):
            hook_problems.append("the sensors never ticked")

    def tick(instance: dg.DagsterInstance) -> list[Any]:
        """Both sensors that start runs, evaluated as the daemon would."""
        evaluations = []
        for sensor in (asset_generated_campaigns_sensor, resume_stalled_campaigns_sensor):
            with dg.build_sensor_context(
                instance=instance, resources={"campaign_store": postgres_store}
            ) as context:
                evaluations.append(sensor(context))
        return evaluations

    with (
        dg.instance_for_test(temp_dir=str(dagster_home)) as instance,
        FaultProxy(sqs_endpoint, delay_seconds=0.05, hook=hook) as proxy,
    ):
        queue = make_sqs_queue(fifo=False, endpoint=proxy.url, max_concurrent_batches=2)
        before, _ = tick(instance)
        assert isinstance(before, dg.SensorResult)
        (request,) = before.run_requests
        results: list[dg.ExecuteInProcessResult] = []
        runner = threading.Thread(
            target=lambda: results.append(
                process_campaign_messages.execute_in_process(
                    run_config=request.run_config,
                    resources={"campaign_store": postgres_store, "sqs_queue": queue},
                    instance=instance,
                    tags=request.tags,
                    raise_on_error=False,
                )
            )
        )
        runner.start()
        deadline = time.monotonic() + 60
        while proxy.calls["SendMessageBatch"] < 3:
            assert time.monotonic() < deadline and runner.is_alive(), "the run never sent"
            time.sleep(0.05)
        during = tick(instance)
        ticks += [type(result).__name__ for result in during]
        ticked.set()
        runner.join(timeout=60)
        after = tick(instance)
    assert not hook_problems, hook_problems
    (result,) = results
    assert result.success, failure_message(result)
    for evaluation in during + after:
        assert isinstance(evaluation, dg.SkipReason), evaluation
    report = check_campaign_invariant(
        postgres_store, campaign_id, sqs_client, queue.queue_url, fifo=False
    )
    assert report.queued == 100 and duplicates(report) == 0
    log_scenario(
        "sensors tick while the run sends",
        group="concurrent runs",
        fifo=False,
        store=postgres_store,
        injected="asset_generated and resume sensors evaluated while the run's third batch "
        "call waits, and after the run",
        proxy=proxy,
        report=report,
        runs=[
            outcome(result),
            "ticks during the run: " + ", ".join(f"{t} (no run requested)" for t in ticks),
        ],
    )


def test_an_entry_left_out_of_sqs_answer_stays_pending_and_the_run_says_so(
    postgres_store: CampaignStore,
    sqs_endpoint: str,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: Any,
) -> None:
    """A 200 that names an entry neither Successful nor Failed: it may be queued or not, so
    it stays pending, the run fails in one line, and a rerun finishes the campaign once."""
    seed = 31
    campaign_id = add_campaign(postgres_store, 40, seed)
    left_out = audience_id(seed, 7)
    with FaultProxy(sqs_endpoint, omit_entry=lambda id_: id_ == left_out) as proxy:
        queue = make_sqs_queue(fifo=True, endpoint=proxy.url, max_concurrent_batches=1)
        result = run_job(postgres_store, queue, campaign_id)
        assert proxy.omitted_entries == 1
        with postgres_store.engine.connect() as connection:
            status = connection.execute(
                sa.select(campaign_audience.c.status).where(campaign_audience.c.id == left_out)
            ).scalar_one()
        counts = postgres_store.audience.counts(campaign_id)
        proxy.omit_entry = None
        # Not drained in between: the resend meets the first message still in the queue.
        rerun = run_job(postgres_store, queue, campaign_id)
    assert not result.success
    message = failure_message(result)
    assert "SQS answered incompletely: SendMessageBatch answered for 9 of 10 entries; " in message
    assert "the other 1 stay pending" in message
    assert status == "pending"
    assert counts["pending"] >= 1 and counts["failed"] == 0
    assert rerun.success, failure_message(rerun)
    report = check_campaign_invariant(
        postgres_store, campaign_id, sqs_client, queue.queue_url, fifo=True
    )
    assert report.queued == 40 and duplicates(report) == 0
    log_scenario(
        "an entry left out of a 200 answer",
        group="SQS entry faults",
        fifo=True,
        store=postgres_store,
        injected="SendMessageBatch answers 200 naming one entry neither Successful nor Failed "
        "(moto stored it), then a rerun without the fault, nothing drained in between",
        proxy=proxy,
        report=report,
        runs=[outcome(result), outcome(rerun)],
        also_injected={"entry left out of the answer": 1},
    )
