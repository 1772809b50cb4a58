"""The campaign preview: `build_preview`, `preview`, the CLI and the job.

The sample is compared byte for byte with what a real run then queues for the same recipients,
on SQLite and PostgreSQL, and the preview is shown to leave every row and the queue as they
were. Touches moto's SQS server over HTTP, SQLite files, a throwaway PostgreSQL database, the
console script as a subprocess and the jobs in process. The report's pure parts are in
`tests/unit/test_preview_report.py`.
"""

import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

import campaign_pipeline
from campaign_pipeline.definitions import defs
from campaign_pipeline.defs.jobs import preview_campaign
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import SqsQueue
from campaign_pipeline.services import preview as preview_service
from campaign_pipeline.services.preview import (
    ASSUMED_MAX_MESSAGE_BYTES,
    ASSUMED_SOURCE,
    build_preview,
    load_campaign,
    queue_limit_from_environment,
)
from campaign_pipeline.store.schema import campaign_audience, campaigns
from tests.conftest import REGION, assert_one_line_error, drain, free_port, run_cli
from tests.integration.test_job import run_job

ORGANIZATION_ID = "123e4567-e89b-12d3-a456-426614174000"
VALID = [f"+1555{i:07d}" for i in range(6)]
BAD_PHONE = "5550000099"
# Valid, but over the smallest MaximumMessageSize SQS allows (its city is 1,200 characters).
BIG = "+15550000098"
SMALL_QUEUE_BYTES = 1024


def add_campaign(store: CampaignStore, status: str = "asset_generated", **fields: Any) -> str:
    """A template campaign with placeholders; six valid recipients and three invalid ones."""
    columns = {
        "message_type": "template",
        "template_name": "welcome",
        "template_language": "pt_BR",
        "template_parameters": [
            {"type": "header", "valueType": "text", "value": "Olá {{name}}!"},
            {"type": "body", "valueType": "text", "value": "{{city}}: call {{phone_number}}"},
        ],
    }
    campaign_id = store.campaigns.add(
        organization_id=ORGANIZATION_ID, name="Preview", status=status, **(columns | fields)
    )
    names = ['Zoë "Z" 🎉', "line\nbreak", "back\\slash", "tab\there", "\ufffe odd", "plain"]
    store.campaigns.add_recipients(
        campaign_id,
        [
            {"phone_number": phone, "name": name, "attributes": {"city": f"Città {i}"}}
            for i, (phone, name) in enumerate(zip(VALID, names, strict=True))
        ]
        + [
            {"phone_number": BAD_PHONE, "name": "bad", "attributes": {"city": "x"}},
            {"phone_number": "+15550000097", "name": "no city", "attributes": {}},
            {"phone_number": BIG, "name": "big", "attributes": {"city": "y" * 1200}},
        ],
    )
    return campaign_id


def every_phone() -> list[str]:
    return [*VALID, BAD_PHONE, "+15550000097", BIG]


def assert_no_phone_number(*texts: str) -> None:
    for text in texts:
        for phone in every_phone():
            assert phone not in text and phone.lstrip("+") not in text, text


def dump(store: CampaignStore) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of both tables, every column."""
    with store.engine.connect() as connection:
        return {
            table.name: [
                tuple(row) for row in connection.execute(sa.select(table).order_by(table.c.id))
            ]
            for table in (campaigns, campaign_audience)
        }


def failed_reasons(store: CampaignStore, campaign_id: str) -> Counter[str]:
    with store.engine.connect() as connection:
        return Counter(
            connection.scalars(
                sa.select(campaign_audience.c.failure_reason).where(
                    campaign_audience.c.campaign_id == campaign_id,
                    campaign_audience.c.status == "failed",
                )
            )
        )


def by_audience_id(bodies: Iterable[str]) -> dict[str, str]:
    return {json.loads(body)["campaignAudienceId"]: body for body in bodies}


def queue_depth(sqs_client: Any, queue_url: str) -> tuple[str, str]:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = sqs_client.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)
    return tuple(attributes["Attributes"][name] for name in names)


@pytest.fixture
def small_queue(
    sqs_endpoint: str,
    make_queue: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> SqsQueue:
    """A standard queue of 1 KiB messages on moto, configured for the preview as for a run."""
    url = make_queue(False, MaximumMessageSize=str(SMALL_QUEUE_BYTES))
    monkeypatch.setenv("AWS_SQS_QUEUE_URL", url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", sqs_endpoint)
    return SqsQueue(queue_url=url, region_name=REGION, endpoint_url=sqs_endpoint)


def preview_job_config(campaign_id: str, limit: int = 5) -> dict[str, Any]:
    return {
        "ops": {
            "preview_campaign_payloads": {"config": {"campaign_id": campaign_id, "limit": limit}}
        }
    }


def output_metadata(result: dg.ExecuteInProcessResult) -> dict[str, dg.MetadataValue]:
    (metadata,) = [
        event.event_specific_data.metadata
        for event in result.all_node_events
        if event.event_type == dg.DagsterEventType.STEP_OUTPUT
    ]
    return metadata


def test_preview_is_byte_for_byte_what_a_run_queues(
    store: CampaignStore, small_queue: SqsQueue, sqs_client: Any
) -> None:
    """The sample and the DataFrame's payloads are the run's bodies; invalid ones its failures."""
    campaign_id = add_campaign(store)
    queue_limit = queue_limit_from_environment()
    assert (queue_limit.max_message_bytes, queue_limit.assumed) == (SMALL_QUEUE_BYTES, False)

    report = build_preview(store, load_campaign(store, campaign_id), queue_limit, sample_size=50)
    frame = campaign_pipeline.preview(campaign_id, database_url=store.database_url)
    assert run_job(store, small_queue, campaign_id).success

    queued = by_audience_id(message["Body"] for message in drain(sqs_client, small_queue.queue_url))
    assert len(queued) == len(VALID)
    assert by_audience_id(report.sample) == queued
    assert (report.recipients, report.valid, report.invalid) == (9, 6, 3)
    assert report.invalid_by_reason == failed_reasons(store, campaign_id)
    assert set(report.invalid_by_reason) == {
        "phone number must start with '+' (E.164)",
        "no value for placeholder {{city}}",
        next(r for r in report.invalid_by_reason if r.startswith("payload is ")),
    }
    valid = frame[frame["failure_reason"].isna()]
    assert dict(zip(valid["campaign_audience_id"], valid["payload"], strict=True)) == queued
    assert Counter(frame["failure_reason"].dropna()) == report.invalid_by_reason


def test_preview_leaves_every_row_and_the_queue_untouched(
    store: CampaignStore, small_queue: SqsQueue, sqs_client: Any
) -> None:
    """A paused, partly sent campaign: rows, counts and the queue are as before; pending counted."""
    campaign_id = add_campaign(store, status="paused")
    with store.engine.begin() as connection:
        first = connection.scalars(
            sa.select(campaign_audience.c.id).order_by(campaign_audience.c.id).limit(2)
        ).all()
        connection.execute(
            campaign_audience.update()
            .where(campaign_audience.c.id.in_(first))
            .values(status="ready_to_send", sqs_message_id="earlier")
        )
    before = dump(store)

    report = build_preview(store, load_campaign(store, campaign_id), queue_limit_from_environment())
    frame = campaign_pipeline.preview(campaign_id, database_url=store.database_url)
    result = preview_campaign.execute_in_process(
        run_config=preview_job_config(campaign_id), resources={"campaign_store": store}
    )

    assert result.success
    assert output_metadata(result)["max_message_bytes"].value == SMALL_QUEUE_BYTES
    assert dump(store) == before
    assert queue_depth(sqs_client, small_queue.queue_url) == ("0", "0")
    assert report.recipients == len(frame) == 7
    assert not set(first) & set(frame["campaign_audience_id"])


def test_import_stays_light_and_preview_stays_the_function() -> None:
    """`import campaign_pipeline` loads no Polars; importing the module keeps `preview` callable."""
    light = "import sys, campaign_pipeline; assert not {'polars', 'dagster'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", light], check=True)
    # This module imported `campaign_pipeline.services.preview` (and so the package) already.
    assert campaign_pipeline.preview is preview_service.preview


@pytest.fixture
def cli_env(tmp_path: Path) -> Callable[..., dict[str, str]]:
    """The CLI's environment for a store, without SQS configured unless variables add it."""

    def make(store: CampaignStore, **variables: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "AWS_SQS_QUEUE_URL"}
        database = {"DAGSTER_HOME": str(tmp_path), "CAMPAIGN_DATABASE_URL": str(store.database_url)}
        return env | database | variables

    return make


def test_cli_text_is_masked_and_says_1_mib_is_assumed(
    sqlite_store: CampaignStore, cli_env: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    """Counts, reasons and three masked payloads; one stderr line says 1 MiB is assumed."""
    campaign_id = add_campaign(sqlite_store)

    result = run_cli(
        "preview", campaign_id, "--limit", "3", env=cli_env(sqlite_store), cwd=tmp_path
    )

    assert result.returncode == 0, result.stderr
    assert_no_phone_number(result.stdout, result.stderr)
    (notice,) = result.stderr.splitlines()
    assert "SQS is not configured (set AWS_SQS_QUEUE_URL)" in notice
    assert "1,048,576 bytes (1 MiB)" in notice
    lines = result.stdout.splitlines()
    assert lines[2] == "recipients  9 pending: 7 valid, 2 invalid"
    assert lines[3:5] == [
        "invalid     1  no value for placeholder {{city}}",
        "            1  phone number must start with '+' (E.164)",
    ]
    assert "max size    1,048,576 bytes, assumed (SQS not configured)" in lines
    assert "sample      the first 3 of 7 valid payloads, phone numbers masked:" in lines
    sample = [line for line in lines if line.startswith('  {"organizationId"')]
    assert len(sample) == 3
    assert all(re.search(r'"to":"\*\*\*\d\d"', line) for line in sample)


def test_cli_json_is_the_report_with_real_payloads(
    postgres_store: CampaignStore, cli_env: Callable[..., dict[str, str]], tmp_path: Path
) -> None:
    """One JSON document: counts, reasons, the assumed size, the sample as payload objects."""
    campaign_id = add_campaign(postgres_store)
    env = cli_env(postgres_store)

    result = run_cli("preview", campaign_id, "--json", env=env, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    document = json.loads(result.stdout)
    expected = build_preview(
        postgres_store, load_campaign(postgres_store, campaign_id), queue_limit_from_environment()
    )
    assert document == expected.as_dict()
    assert document["campaign_id"] == campaign_id
    assert document["status"] == "asset_generated"
    assert (document["recipients"], document["valid"]) == (9, 7)
    assert document["invalid"]["phone number must start with '+' (E.164)"] == 1
    assert document["max_message_bytes"] == 1_048_576
    assert document["max_message_bytes_source"] == "assumed (SQS not configured)"
    # The sample is the payloads themselves: their phone numbers are not masked.
    assert {payload["to"] for payload in document["sample"]} <= {*VALID, BIG}


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_duplicates_are_skipped_in_the_preview_as_the_run_then_skips_them(
    database: str,
    request: pytest.FixtureRequest,
    cli_env: Callable[..., dict[str, str]],
    make_sqs_queue: Callable[..., SqsQueue],
    tmp_path: Path,
) -> None:
    """Two more recipients with a valid recipient's number: `preview --json` and the text count
    them as skipped duplicates, not valid ones, and the run fails exactly those two."""
    store: CampaignStore = request.getfixturevalue(f"{database}_store")
    campaign_id = add_campaign(store)
    store.campaigns.add_recipients(
        campaign_id,
        [{"phone_number": VALID[0], "name": "Ana", "attributes": {"city": "Lisboa"}}] * 2,
    )
    env = cli_env(store)

    document = json.loads(run_cli("preview", campaign_id, "--json", env=env, cwd=tmp_path).stdout)
    lines = run_cli("preview", campaign_id, env=env, cwd=tmp_path).stdout.splitlines()
    frame = campaign_pipeline.preview(campaign_id, database_url=str(store.database_url))

    assert (document["recipients"], document["valid"]) == (11, 7)
    assert document["skipped"] == {"duplicate": 2, "opted_out": 0, "frequency_capped": 0}
    assert sum(document["invalid"].values()) == 2
    assert lines[2] == "recipients  11 pending: 7 valid, 2 invalid, 2 skipped"
    assert "skipped     2 duplicate, 0 opted_out, 0 frequency_capped" in lines
    skipped = set(frame[frame["failure_code"] == "duplicate"]["campaign_audience_id"])
    result = run_job(store, make_sqs_queue(fifo=False), campaign_id)
    assert result.success
    with store.engine.connect() as connection:
        failed = dict(
            connection.execute(
                sa.select(campaign_audience.c.id, campaign_audience.c.failure_code).where(
                    campaign_audience.c.campaign_id == campaign_id,
                    campaign_audience.c.status == "failed",
                )
            )
            .tuples()
            .all()
        )
    assert {id_ for id_, code in failed.items() if code == "duplicate"} == skipped
    assert len(skipped) == 2


@pytest.mark.parametrize(
    ("case", "fragments"),
    [
        ("cancelled", ("is cancelled", "it is never processed again")),
        ("unknown", ("does not exist in sqlite:///",)),
        ("malformed", ("campaign id 'campaign-42' is not a UUID",)),
        ("fax", ("cannot be sent: unknown message type 'fax'",)),
        ("unreachable", ("cannot read the maximum message size of queue", "cannot reach")),
    ],
)
def test_cli_refuses_in_one_line_and_changes_nothing(
    case: str,
    fragments: tuple[str, ...],
    sqlite_store: CampaignStore,
    cli_env: Callable[..., dict[str, str]],
    tmp_path: Path,
) -> None:
    """Cancelled, unknown, malformed, undeliverable or unreadable queue: one line, exit 2."""
    campaign_id = {
        "cancelled": lambda: add_campaign(sqlite_store, status="cancelled"),
        "unknown": lambda: "123e4567-e89b-12d3-a456-4266141740ff",
        "malformed": lambda: "campaign-42",
        "fax": lambda: add_campaign(sqlite_store, message_type="fax"),
        "unreachable": lambda: add_campaign(sqlite_store),
    }[case]()
    variables = {}
    if case == "unreachable":
        variables = {
            "AWS_SQS_QUEUE_URL": "http://127.0.0.1:1/123456789012/q",
            "AWS_ENDPOINT_URL_SQS": f"http://127.0.0.1:{free_port()}",
        }
    before = dump(sqlite_store)

    result = run_cli("preview", campaign_id, env=cli_env(sqlite_store, **variables), cwd=tmp_path)

    line = assert_one_line_error(result, "campaign-pipeline: error:", *fragments)
    assert_no_phone_number(line)
    assert dump(sqlite_store) == before


def test_job_metadata_has_counts_tables_and_no_phone_number(
    sqlite_store: CampaignStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counts as ints, reasons and the sample as markdown tables, every phone number masked."""
    monkeypatch.delenv("AWS_SQS_QUEUE_URL", raising=False)
    campaign_id = add_campaign(sqlite_store)

    result = preview_campaign.execute_in_process(
        run_config=preview_job_config(campaign_id, limit=2),
        resources={"campaign_store": sqlite_store},
    )

    assert result.success
    output = output_metadata(result)
    assert (output["recipients"].value, output["valid"].value, output["invalid"].value) == (9, 7, 2)
    assert output["max_message_bytes"].value == ASSUMED_MAX_MESSAGE_BYTES
    assert output["max_message_bytes_source"].value == ASSUMED_SOURCE
    reasons = output["invalid_by_reason"].value
    assert reasons.startswith("| reason | recipients |\n|---|---|\n")
    assert "| phone number must start with '+' (E.164) | 1 |" in reasons
    sample = output["sample"].value.splitlines()
    assert sample[:2] == ["| # | payload |", "|---|---|"] and len(sample) == 4
    assert all(re.search(r'"to":"\*\*\*\d\d"', row) for row in sample[2:])
    assert result.output_for_node("preview_campaign_payloads")["valid"] == 7
    assert_no_phone_number(" ".join(str(event) for event in result.all_events))


def test_job_fails_in_one_line_for_a_cancelled_campaign(sqlite_store: CampaignStore) -> None:
    """A cancelled campaign fails the run with the reason; the campaign stays as it was."""
    campaign_id = add_campaign(sqlite_store, status="cancelled")
    before = dump(sqlite_store)

    result = preview_campaign.execute_in_process(
        run_config=preview_job_config(campaign_id),
        resources={"campaign_store": sqlite_store},
        raise_on_error=False,
    )

    assert not result.success
    (event,) = result.get_step_failure_events()
    description = event.step_failure_data.user_failure_data.description
    assert description == f"campaign {campaign_id} is cancelled; it is never processed again"
    assert dump(sqlite_store) == before


def test_code_location_job_runs_without_sqs_settings(
    sqlite_store: CampaignStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The launchpad's job needs only CAMPAIGN_DATABASE_URL: unset SQS assumes 1 MiB."""
    monkeypatch.delenv("AWS_SQS_QUEUE_URL", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.setenv("CAMPAIGN_DATABASE_URL", str(sqlite_store.database_url))
    campaign_id = add_campaign(sqlite_store)

    result = defs.get_job_def("preview_campaign").execute_in_process(
        run_config=preview_job_config(campaign_id)
    )

    assert result.success
    assert result.output_for_node("preview_campaign_payloads")["recipients"] == 9
