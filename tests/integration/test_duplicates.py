"""Each person once: recipients of one campaign with the same number are sent one message.

On PostgreSQL (the lookup by array) and SQLite (the whole campaign), through the job under the
multiprocess executor with the campaign split into shards and chunks, and again after a run
already sent the number; the invariant holds after each, every failure with its code.
"""

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from campaign_pipeline.defs.jobs import campaign_run_config, process_campaign_messages
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import SqsQueue
from campaign_pipeline.store.records import Outcomes
from campaign_pipeline.store.schema import campaigns
from tests.conftest import REGION
from tests.support.campaigns import add_template_campaign
from tests.support.invariant import check_campaign_invariant, drain_queue
from tests.support.send_processes import run_in_send_processes

# Ids sort as they are numbered: r000 is the smallest.
SAME_PERSON = (3, 17, 25, 38, 52, 59)  # one number, in every shard and chunk below
PAIR = (40, 41)


def add_duplicated_campaign(store: CampaignStore, recipients: int = 60) -> str:
    campaign_id = add_template_campaign(store)
    rows = []
    for i in range(recipients):
        number = f"+1555{i:07d}"
        if i in SAME_PERSON:
            number = "+15550000003"
        elif i in PAIR:
            number = "+15550000040"
        rows.append({"id": f"{campaign_id[:8]}-r{i:03d}", "phone_number": number, "name": "R"})
    store.campaigns.add_recipients(campaign_id, rows)
    return campaign_id


def test_the_keeper_is_the_queued_recipient_else_the_smallest_id(store: CampaignStore) -> None:
    campaign_id = add_template_campaign(store)
    store.campaigns.add_recipients(
        campaign_id,
        [
            {"id": "a", "phone_number": "+15550000001"},
            {"id": "b", "phone_number": "+15550000001"},
            {"id": "c", "phone_number": "+15550000002"},
            {"id": "d", "phone_number": "+15550000002"},
            {"id": "e", "phone_number": "+15550000003"},
            {"id": "f", "phone_number": None},
            {"id": "g", "phone_number": None},
        ],
    )
    other = add_template_campaign(store)
    store.campaigns.add_recipients(other, [{"id": "z", "phone_number": "+15550000003"}])
    store.claims.claim(campaign_id, "run-1", 60)
    queued = Outcomes()
    queued.add_sent(["d"], ["m-1"])
    store.audience.record_outcomes(campaign_id, "run-1", queued, 60)

    keepers = store.audience.number_keepers(
        campaign_id, ["+15550000001", "+15550000002", "+15550000003"]
    )

    assert dict(keepers.iter_rows()) == {"+15550000001": "a", "+15550000002": "d"}
    # Only the numbers asked for (a chunk's).
    assert store.audience.number_keepers(campaign_id, ["+15550000002"]).height == 1


def test_duplicates_across_shards_and_chunks_of_the_multiprocess_executor_are_sent_once(
    postgres_store: CampaignStore,
    postgres_url: str,
    make_queue: Callable[..., str],
    sqs_endpoint: str,
    sqs_client: object,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two send processes, shards of 30 and chunks of 10: one message per number, each
    duplicate failed naming the smallest id; a rerun after more of the number arrive sends
    none of them."""
    campaign_id = add_duplicated_campaign(postgres_store)
    queue_url = make_queue(fifo=False)
    with run_in_send_processes(
        monkeypatch,
        tmp_path,
        database_url=postgres_url,
        queue_url=queue_url,
        sqs_endpoint=sqs_endpoint,
        campaign_id=campaign_id,
        recipients_per_shard=30,
        recipients_per_chunk=10,
    ) as (result, instance):
        assert result.success
        shards = [
            entry
            for entry in instance.all_logs(result.run_id, of_type=dg.DagsterEventType.STEP_START)
            if entry.step_key.startswith("send_campaign_messages")
        ]
    assert len(shards) == 2
    report = check_campaign_invariant(
        postgres_store, campaign_id, sqs_client, queue_url, fifo=False
    )
    prefix = campaign_id[:8]
    duplicates = {f"{prefix}-r{i:03d}" for i in (*SAME_PERSON[1:], *PAIR[1:])}
    assert report.failure_codes == dict.fromkeys(duplicates, "duplicate")
    assert report.failure_reasons[f"{prefix}-r059"] == (
        f"duplicate of recipient {prefix}-r003 (the same phone number)"
    )
    assert report.queued == 60 - len(duplicates)
    numbers = Counter(body.split('"to":"')[1][:12] for body in report.bodies.values())
    assert numbers.most_common(1)[0][1] == 1
    assert postgres_store.audience.failed_by_code(campaign_id) == {"duplicate": len(duplicates)}

    # More of both people arrive, one with an id smaller than anyone's, and the campaign runs
    # again: the numbers were sent, so neither is.
    later = [f"{prefix}-a000", f"{prefix}-r999"]
    postgres_store.campaigns.add_recipients(
        campaign_id,
        [
            {"id": later[0], "phone_number": "+15550000003", "name": "R"},
            {"id": later[1], "phone_number": "+15550000040", "name": "R"},
        ],
    )
    with postgres_store.engine.begin() as connection:
        connection.execute(
            campaigns.update().where(campaigns.c.id == campaign_id).values(status="asset_generated")
        )
    queue = SqsQueue(queue_url=queue_url, region_name=REGION)
    rerun = process_campaign_messages.execute_in_process(
        run_config=campaign_run_config(campaign_id),
        resources={"campaign_store": postgres_store, "sqs_queue": queue},
    )
    assert rerun.success
    again = check_campaign_invariant(
        postgres_store,
        campaign_id,
        sqs_client,
        queue_url,
        fifo=False,
        messages=report.messages + drain_queue(sqs_client, queue_url),
    )
    assert again.queued == report.queued
    assert {id_: again.failure_reasons[id_] for id_ in later} == {
        later[0]: f"duplicate of recipient {prefix}-r003 (the same phone number)",
        later[1]: f"duplicate of recipient {prefix}-r040 (the same phone number)",
    }
