"""The frequency cap: reservations, sends, racing campaigns on PostgreSQL, the command."""

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from campaign_pipeline.frequency_caps import parse_frequency_cap
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import SqsQueue
from campaign_pipeline.store.schema import campaign_audience
from tests.conftest import REGION, assert_one_line_error, run_cli
from tests.integration.test_job import failure_message, run_job
from tests.support.invariant import check_campaign_invariant, drain_queue

ORGANIZATION = "org-cap"
NUMBERS = [f"+4479460{index:05d}" for index in range(30)]


def test_a_reservation_grants_a_number_only_while_other_campaigns_have_fewer_than_n(
    store: CampaignStore,
) -> None:
    sends, cap = store.marketing_sends, parse_frequency_cap("2/1h")
    assert sends.reserve(ORGANIZATION, "a", cap, NUMBERS) == set(NUMBERS)
    assert sends.reserve(ORGANIZATION, "b", cap, NUMBERS[:20]) == set(NUMBERS[:20])
    # Two campaigns hold the first 20: a third gets only the other 10.
    assert sends.over_cap(ORGANIZATION, "c", cap, NUMBERS) == set(NUMBERS[:20])
    assert sends.reserve(ORGANIZATION, "c", cap, NUMBERS) == set(NUMBERS[20:])
    assert sends.over_cap(ORGANIZATION, "d", cap, NUMBERS) == set(NUMBERS)
    # A campaign asking again (a resumed send) keeps its own place.
    assert sends.reserve(ORGANIZATION, "a", cap, NUMBERS[:5]) == set(NUMBERS[:5])
    # Another organization's messages do not count.
    assert sends.reserve("other", "e", cap, NUMBERS) == set(NUMBERS)
    # Released, a place frees up.
    sends.release(ORGANIZATION, "b", NUMBERS[:3])
    assert sends.reserve(ORGANIZATION, "d", cap, NUMBERS[:20]) == set(NUMBERS[:3])


def test_entries_older_than_the_window_no_longer_count(store: CampaignStore) -> None:
    sends, cap = store.marketing_sends, parse_frequency_cap("1/1s")
    assert sends.reserve(ORGANIZATION, "a", cap, NUMBERS) == set(NUMBERS)
    assert sends.reserve(ORGANIZATION, "b", cap, NUMBERS) == set()
    time.sleep(1.1)
    assert sends.reserve(ORGANIZATION, "b", cap, NUMBERS) == set(NUMBERS)


def test_racing_reservations_never_grant_a_number_past_the_cap(
    postgres_store: CampaignStore,
) -> None:
    """Six campaigns reserve the same 400 numbers at once, chunk by chunk in different orders,
    each chunk started by all of them together: every number is granted exactly N times."""
    cap = parse_frequency_cap("2/1h")
    numbers = [f"+4479461{index:05d}" for index in range(400)]
    chunks = [numbers[start : start + 40] for start in range(0, 400, 40)]
    campaigns = [f"campaign-{index}" for index in range(6)]
    start_together = threading.Barrier(len(campaigns))
    granted: Counter[str] = Counter()
    lock = threading.Lock()

    def send(index: int) -> None:
        order = chunks[index:] + chunks[:index]
        for chunk in order if index % 2 else reversed(order):
            start_together.wait(timeout=30)
            got = postgres_store.marketing_sends.reserve(ORGANIZATION, campaigns[index], cap, chunk)
            with lock:
                granted.update(got)

    with ThreadPoolExecutor(len(campaigns)) as pool:
        for done in [pool.submit(send, index) for index in range(len(campaigns))]:
            done.result()
    assert granted == dict.fromkeys(numbers, 2)


def add_campaign(
    store: CampaignStore,
    numbers: list[str],
    organization_id: str = ORGANIZATION,
    category: str | None = None,
) -> str:
    """A template campaign of `organization_id` to `numbers` (marketing unless `category`)."""
    campaign_id = store.campaigns.add(
        organization_id=organization_id,
        name="cap",
        status="asset_generated",
        message_type="template",
        template_name="spring_sale",
        template_language="en",
        category=category,
    )
    store.campaigns.add_recipients(
        campaign_id, [{"phone_number": number, "name": "R"} for number in numbers]
    )
    return campaign_id


def queued_numbers(store: CampaignStore, campaign_id: str) -> set[str]:
    with store.engine.connect() as connection:
        return set(
            connection.execute(
                sa.select(campaign_audience.c.phone_number).where(
                    campaign_audience.c.campaign_id == campaign_id,
                    campaign_audience.c.status == "ready_to_send",
                )
            ).scalars()
        )


def test_marketing_queued_before_a_cap_held_counts_once_one_does(
    store: CampaignStore,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: object,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Sent without a cap, then capped by the organization's own: the earlier messages count;
    utility campaigns and other organizations are not capped; `off` lifts it, and what was sent
    meanwhile counts when a cap holds again."""
    monkeypatch.delenv("CAMPAIGN_FREQUENCY_CAP", raising=False)
    queue = make_sqs_queue(fifo=False)
    numbers = NUMBERS[:20]

    def send(campaign_id: str) -> dict[str, int]:
        result = run_job(store, queue, campaign_id, recipients_per_chunk=8)
        assert result.success
        report = check_campaign_invariant(
            store, campaign_id, sqs_client, queue.queue_url, fifo=False
        )
        return dict(report.codes) | {"queued": report.queued}

    assert send(add_campaign(store, numbers)) == {"queued": 20}
    store.organizations.set_frequency_cap(ORGANIZATION, "1/1h")
    capped = add_campaign(store, [*numbers, *NUMBERS[20:25]])
    assert send(capped) == {"queued": 5, "frequency_capped": 20}
    assert store.audience.failed_by_code(capped) == {"frequency_capped": 20}
    assert send(add_campaign(store, numbers, category="utility")) == {"queued": 20}
    assert send(add_campaign(store, numbers, organization_id="org-other")) == {"queued": 20}
    store.organizations.set_frequency_cap(ORGANIZATION, "off")
    assert send(add_campaign(store, numbers)) == {"queued": 20}
    # Two marketing messages each now (the first campaign's and the last one's).
    store.organizations.set_frequency_cap(ORGANIZATION, "2/1h")
    assert send(add_campaign(store, numbers)) == {"queued": 0, "frequency_capped": 20}
    store.organizations.set_frequency_cap(ORGANIZATION, "3/1h")
    assert send(add_campaign(store, NUMBERS[:25])) == {"queued": 25}


def test_two_campaigns_of_one_organization_racing_in_two_processes_stay_under_the_cap(
    postgres_store: CampaignStore,
    postgres_url: str,
    sqs_endpoint: str,
    make_queue: Callable[..., str],
    sqs_client: object,
    tmp_path: Path,
) -> None:
    """`process` of two campaigns with the same 300 numbers, started together under
    CAMPAIGN_FREQUENCY_CAP=1/1h: each number is queued by exactly one of them."""
    numbers = [f"+4479462{index:05d}" for index in range(300)]
    campaigns = [add_campaign(postgres_store, numbers) for _ in range(2)]
    queue_url = make_queue(fifo=False)
    env = dict(os.environ) | {
        "CAMPAIGN_DATABASE_URL": postgres_url,
        "AWS_SQS_QUEUE_URL": queue_url,
        "AWS_ENDPOINT_URL_SQS": sqs_endpoint,
        "AWS_REGION": REGION,
        "CAMPAIGN_FREQUENCY_CAP": "1/1h",
    }
    children = []
    for index, campaign_id in enumerate(campaigns):
        home = tmp_path / f"home_{index}"
        home.mkdir()
        children.append(
            subprocess.Popen(
                [sys.executable, "-m", "campaign_pipeline.cli", "process", campaign_id],
                env=env | {"DAGSTER_HOME": str(home)},
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [child.communicate(timeout=240)[0] for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs
    messages = drain_queue(sqs_client, queue_url)
    reports = [
        check_campaign_invariant(
            postgres_store,
            campaign_id,
            sqs_client,
            queue_url,
            fifo=False,
            messages=messages,
            ignore_other_campaigns=True,
        )
        for campaign_id in campaigns
    ]
    first, second = (queued_numbers(postgres_store, campaign_id) for campaign_id in campaigns)
    assert first.isdisjoint(second) and first | second == set(numbers)
    assert sum(report.queued for report in reports) == 300
    assert all(set(report.codes) <= {"frequency_capped"} for report in reports)


def test_frequency_cap_set_show_and_clear_from_the_command_line(
    sqlite_store: CampaignStore, tmp_path: Path
) -> None:
    env = dict(os.environ) | {
        "CAMPAIGN_DATABASE_URL": sqlite_store.database_url,
        "CAMPAIGN_FREQUENCY_CAP": "1/24h",
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("frequency-cap", *args, env=env, cwd=tmp_path)

    assert cli("show", ORGANIZATION).stdout == (
        f"organization {ORGANIZATION}: at most 1 marketing message per number within 24h "
        "(1/24h, CAMPAIGN_FREQUENCY_CAP)\n"
    )
    assert (
        cli("set", ORGANIZATION, "3/7d").stdout
        == f"organization {ORGANIZATION}: frequency cap 3/7d\n"
    )
    assert json.loads(cli("show", ORGANIZATION, "--json").stdout) == {
        "organization_id": ORGANIZATION,
        "frequency_cap": "3/7d",
        "source": "organization",
        "default": "1/24h",
    }
    assert cli("set", ORGANIZATION, "off").returncode == 0
    assert json.loads(cli("show", ORGANIZATION, "--json").stdout)["frequency_cap"] is None
    assert "no frequency cap (its own: off)" in cli("show", ORGANIZATION).stdout
    assert cli("clear", ORGANIZATION).stdout == (
        f"organization {ORGANIZATION}: the default, 1/24h\n"
    )
    assert json.loads(cli("show", ORGANIZATION, "--json").stdout)["source"] == "default"
    assert_one_line_error(cli("set", ORGANIZATION, "0/7d"), "N/DURATION", "or off; not '0/7d'")
    assert_one_line_error(cli("set", "no such org!", "1/1h"), "organization id")
    assert sqlite_store.organizations.frequency_cap(ORGANIZATION) is None
    env["CAMPAIGN_FREQUENCY_CAP"] = "weekly"
    assert_one_line_error(cli("show", ORGANIZATION), "CAMPAIGN_FREQUENCY_CAP", "'weekly'")


def test_capped_recipients_show_in_preview_status_and_the_runs_metadata(
    store: CampaignStore,
    make_sqs_queue: Callable[..., SqsQueue],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """`preview --json` counts them before the run, which then fails exactly those; `status
    --json`, the text and the send step's metadata count them by code."""
    monkeypatch.setenv("CAMPAIGN_FREQUENCY_CAP", "1/24h")
    queue = make_sqs_queue(fifo=False)
    assert run_job(store, queue, add_campaign(store, NUMBERS[:6])).success
    campaign_id = add_campaign(store, NUMBERS[:10])
    env = dict(os.environ) | {"CAMPAIGN_DATABASE_URL": str(store.database_url)}

    preview = run_cli("preview", campaign_id, "--json", env=env, cwd=tmp_path)
    document = json.loads(preview.stdout)
    assert (document["recipients"], document["valid"]) == (10, 4), preview.stderr
    assert document["skipped"] == {"duplicate": 0, "opted_out": 0, "frequency_capped": 6}
    result = run_job(store, queue, campaign_id)
    assert result.success
    status = json.loads(run_cli("status", campaign_id, "--json", env=env, cwd=tmp_path).stdout)
    assert status["failed_by_code"] == {"frequency_capped": 6}
    assert status["counts"] == {"pending": 0, "ready_to_send": 4, "failed": 6}
    table = run_cli("status", campaign_id, env=env, cwd=tmp_path).stdout
    assert "\nfailed      6 frequency_capped\n" in table, table
    (step,) = [
        event
        for event in result.all_node_events
        if event.is_successful_output and event.step_key.startswith("send_campaign_messages")
    ]
    metadata = step.step_output_data.metadata
    assert metadata["failed_by_code"].value == {"frequency_capped": 6}
    assert metadata["frequency_cap"].value == "1/24h"


def test_a_bad_cap_fails_the_send_step_in_one_line_before_any_batch(
    sqlite_store: CampaignStore,
    make_sqs_queue: Callable[..., SqsQueue],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing is sent and the lease is let go: fixed, the campaign is sent by the next run."""
    monkeypatch.setenv("CAMPAIGN_FREQUENCY_CAP", "once a day")
    queue = make_sqs_queue(fifo=False)
    campaign_id = add_campaign(sqlite_store, NUMBERS[:5])
    result = run_job(sqlite_store, queue, campaign_id)
    assert not result.success
    message = failure_message(result)
    assert message.startswith("CAMPAIGN_FREQUENCY_CAP: a frequency cap must be N/DURATION")
    assert "\n" not in message and "Traceback" not in message
    assert sqlite_store.audience.counts(campaign_id)["pending"] == 5
    assert sqlite_store.campaigns.get(campaign_id)["lease_run_id"] is None
    monkeypatch.setenv("CAMPAIGN_FREQUENCY_CAP", "1/24h")
    assert run_job(sqlite_store, queue, campaign_id).success
    assert sqlite_store.audience.counts(campaign_id)["ready_to_send"] == 5
