"""The guards: the preflight count before a campaign's first send, the rejection bound while
it sends.

The whole job (`execute_in_process`) on SQLite and PostgreSQL with moto's SQS server over HTTP;
the rejection guard through the fault proxy's `Failed` entries (moto almost never reports one).
Assertions read the campaign row, the recipients and the queue.
"""

from collections.abc import Callable
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from campaign_pipeline.defs.jobs import process_campaign_messages
from campaign_pipeline.defs.ops import CampaignConfig
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import SqsQueue
from campaign_pipeline.sending.guards import count_invalid
from campaign_pipeline.store.schema import campaign_audience
from tests.conftest import drain
from tests.support.fault_proxy import FaultProxy

ORGANIZATION_ID = "123e4567-e89b-12d3-a456-426614174000"
NO_PLUS = "phone number must start with '+' (E.164)"


def add_campaign(store: CampaignStore, valid: int, invalid: int) -> str:
    campaign_id = store.campaigns.add(
        organization_id=ORGANIZATION_ID,
        name="guards",
        status="asset_generated",
        message_type="text",
        message_content="Hi {{name}}",
    )
    store.campaigns.add_recipients(
        campaign_id,
        [{"phone_number": f"+1555{i:07d}", "name": "A"} for i in range(valid)]
        + [{"phone_number": f"555{i:07d}", "name": "B"} for i in range(invalid)],
    )
    return campaign_id


def run_job(
    store: CampaignStore, queue: SqsQueue, campaign_id: str, **config: Any
) -> dg.ExecuteInProcessResult:
    return process_campaign_messages.execute_in_process(
        run_config=dg.RunConfig(
            ops={"claim_campaign": CampaignConfig(campaign_id=campaign_id, **config)}
        ),
        resources={"campaign_store": store, "sqs_queue": queue},
        raise_on_error=False,
    )


def failure(result: dg.ExecuteInProcessResult) -> str:
    (event,) = result.get_step_failure_events()
    return event.step_failure_data.user_failure_data.description or ""


def fix_phone_numbers(store: CampaignStore, campaign_id: str) -> None:
    with store.engine.begin() as connection:
        connection.execute(
            campaign_audience.update()
            .where(campaign_audience.c.campaign_id == campaign_id)
            .where(~campaign_audience.c.phone_number.startswith("+"))
            .values(phone_number="+" + campaign_audience.c.phone_number)
        )


def test_preflight_holds_back_a_mostly_invalid_campaign_and_sends_nothing(
    store: CampaignStore, make_sqs_queue: Callable[..., SqsQueue], sqs_client: Any
) -> None:
    """8 of 10 invalid: the run fails in one line, nothing is queued or marked, the campaign is
    paused with the fraction and reasons; resume checks again; fixed data then goes out.
    """
    campaign_id = add_campaign(store, valid=2, invalid=8)
    queue = make_sqs_queue(fifo=False)
    result = run_job(store, queue, campaign_id)
    assert not result.success
    line = failure(result)
    assert line == (
        f"campaign {campaign_id} held back, nothing sent: 8 of 10 recipients (80%) are invalid: "
        f"{NO_PLUS} 8 (at most 50% may be). Fix the recipients and resume it, or "
        "`resume --accept-invalid` to send the valid ones"
    )
    campaign = store.campaigns.get(campaign_id)
    assert campaign["status"] == "paused"
    assert campaign["paused_by"].startswith("preflight guard: run ")
    assert campaign["last_error"].startswith("8 of 10 recipients (80%) are invalid")
    assert campaign["lease_run_id"] is None
    assert store.audience.counts(campaign_id) == {"pending": 10, "ready_to_send": 0, "failed": 0}
    assert drain(sqs_client, queue.queue_url) == []

    # Resumed as it is: nothing was handled, so it starts over and is held back again.
    assert store.control.apply(campaign_id, "resume", "tester").after == "asset_generated"
    assert not run_job(store, queue, campaign_id).success
    assert store.campaigns.get(campaign_id)["status"] == "paused"

    fix_phone_numbers(store, campaign_id)
    store.control.apply(campaign_id, "resume", "tester")
    assert run_job(store, queue, campaign_id).success
    assert store.audience.counts(campaign_id) == {"pending": 0, "ready_to_send": 10, "failed": 0}
    assert len(drain(sqs_client, queue.queue_url)) == 10


@pytest.mark.parametrize(
    ("recipients_per_shard", "counted_in"),
    [(1_000, "send_campaign_messages[shard_0]"), (3, "claim_campaign")],
    ids=["one shard: in the send step", "several shards: at the claim"],
)
def test_the_guard_holds_back_before_anything_is_sent_wherever_it_counts(
    store: CampaignStore,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: Any,
    recipients_per_shard: int,
    counted_in: str,
) -> None:
    """Sent by one step, the campaign is counted there, from the payloads it would send, before
    the first batch; sent by several, at the claim. Either way: held back, nothing queued."""
    campaign_id = add_campaign(store, valid=2, invalid=8)
    queue = make_sqs_queue(fifo=False)
    result = run_job(store, queue, campaign_id, recipients_per_shard=recipients_per_shard)
    (event,) = result.get_step_failure_events()
    assert event.step_key == counted_in
    assert failure(result).startswith(f"campaign {campaign_id} held back, nothing sent: 8 of 10")
    assert store.campaigns.get(campaign_id)["status"] == "paused"
    assert store.audience.counts(campaign_id) == {"pending": 10, "ready_to_send": 0, "failed": 0}
    assert drain(sqs_client, queue.queue_url) == []


def test_resume_accepting_invalid_sends_the_valid_ones(
    store: CampaignStore, make_sqs_queue: Callable[..., SqsQueue], sqs_client: Any
) -> None:
    """`resume --accept-invalid` lifts the guard: the 2 valid go out, the 8 invalid fail."""
    campaign_id = add_campaign(store, valid=2, invalid=8)
    queue = make_sqs_queue(fifo=False)
    assert not run_job(store, queue, campaign_id).success
    store.control.apply(campaign_id, "resume", "tester", accept_invalid=True)
    assert store.campaigns.get(campaign_id)["invalid_accepted_at"] is not None
    assert run_job(store, queue, campaign_id).success
    assert store.audience.counts(campaign_id) == {"pending": 0, "ready_to_send": 2, "failed": 8}
    assert len(drain(sqs_client, queue.queue_url)) == 2


def test_a_campaign_under_the_bound_is_sent_and_one_disables_the_guard(
    store: CampaignStore,
    make_sqs_queue: Callable[..., SqsQueue],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Half invalid is allowed by default; CAMPAIGN_MAX_INVALID_FRACTION=1 never holds back."""
    half = add_campaign(store, valid=5, invalid=5)
    assert run_job(store, make_sqs_queue(fifo=False), half).success
    monkeypatch.setenv("CAMPAIGN_MAX_INVALID_FRACTION", "1")
    mostly = add_campaign(store, valid=1, invalid=9)
    assert run_job(store, make_sqs_queue(fifo=False), mostly).success
    assert store.audience.counts(mostly) == {"pending": 0, "ready_to_send": 1, "failed": 9}


def test_a_bad_bound_fails_the_run_in_one_line(
    sqlite_store: CampaignStore,
    make_sqs_queue: Callable[..., SqsQueue],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """CAMPAIGN_MAX_INVALID_FRACTION=half: the run fails saying what the variable must be."""
    monkeypatch.setenv("CAMPAIGN_MAX_INVALID_FRACTION", "half")
    campaign_id = add_campaign(sqlite_store, valid=1, invalid=0)
    result = run_job(sqlite_store, make_sqs_queue(), campaign_id)
    assert failure(result) == (
        "CAMPAIGN_MAX_INVALID_FRACTION must be a number from 0 to 1, not 'half'"
    )


def test_a_large_campaign_is_judged_on_a_sample_spread_over_it(
    postgres_store: CampaignStore, make_sqs_queue: Callable[..., SqsQueue]
) -> None:
    """Above the exact bound the count reads evenly spread slices and says it sampled; the
    invalid recipients at the end of the id order are seen too.
    """
    campaign_id = add_campaign(postgres_store, valid=300, invalid=0)
    with postgres_store.engine.begin() as connection:
        # The last 70% of the ids are invalid: a sample of the first ids alone would miss them.
        ids = sorted(
            connection.execute(
                sa.select(campaign_audience.c.id).where(
                    campaign_audience.c.campaign_id == campaign_id
                )
            ).scalars()
        )
        connection.execute(
            campaign_audience.update()
            .where(campaign_audience.c.id.in_(ids[90:]))
            .values(phone_number="5550000000")
        )
    postgres_store.claims.claim(campaign_id, "run-1", lease_seconds=60)
    chunks, sampled = postgres_store.audience.preflight_chunks(
        campaign_id, 300, exact_up_to=60, slices=6
    )
    message = postgres_store.claims.claim(campaign_id, "run-1", lease_seconds=60).message
    counted = count_invalid(message, chunks, 1 << 20, sampled_from=300)
    assert sampled
    assert counted.recipients == 60
    assert 0.6 <= counted.fraction <= 0.8
    assert "of a sample of 60 of 300 recipients" in (counted.verdict(0.5) or "")


def test_sqs_refusing_too_many_entries_pauses_the_campaign_with_the_codes(
    postgres_store: CampaignStore,
    sqs_endpoint: str,
    make_queue: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every entry refused for good (InvalidParameterValue, a sender fault) with a bound of 5:
    the send stops soon, the refused ones are failed with SQS's reason, the rest stay pending,
    the campaign is paused with the top codes, and the run fails in one line.
    """
    monkeypatch.setenv("CAMPAIGN_MAX_REJECTED", "5")
    campaign_id = add_campaign(postgres_store, valid=400, invalid=0)

    def refuse(entry: dict[str, Any], attempt: int) -> tuple[str, bool]:
        return "InvalidParameterValue", True

    with FaultProxy(sqs_endpoint, entry_fault=refuse) as proxy:
        queue = SqsQueue(
            queue_url=make_queue(fifo=False),
            region_name="us-east-1",
            endpoint_url=proxy.url,
            max_concurrent_batches=2,
        )
        result = run_job(postgres_store, queue, campaign_id)
    assert not result.success
    line = failure(result)
    assert (
        line.startswith(f"campaign {campaign_id} held back: SQS refused ")
        and "more than CAMPAIGN_MAX_REJECTED (5): InvalidParameterValue " in line
    )
    counts = postgres_store.audience.counts(campaign_id)
    # Stopped at the first batch over the bound, plus the one in flight beside it.
    assert 6 <= counts["failed"] <= 30
    assert counts["ready_to_send"] == 0
    assert counts["pending"] == 400 - counts["failed"]
    campaign = postgres_store.campaigns.get(campaign_id)
    assert campaign["status"] == "paused"
    assert campaign["paused_by"].startswith("rejection guard: run ")
    assert "InvalidParameterValue" in campaign["last_error"]
    assert campaign["failed_count"] == counts["failed"]
    with postgres_store.engine.connect() as connection:
        reasons = set(
            connection.execute(
                sa.select(campaign_audience.c.failure_reason).where(
                    campaign_audience.c.campaign_id == campaign_id,
                    campaign_audience.c.status == "failed",
                )
            ).scalars()
        )
    assert len(reasons) == 1
    assert reasons.pop().startswith("SQS rejected the message (InvalidParameterValue)")
