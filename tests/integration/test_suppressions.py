"""Nobody who opted out: the suppression list in the store, `suppress` as a real subprocess, and
the send, which fails a suppressed recipient as `opted_out` instead of queueing it.

On SQLite and PostgreSQL; the send through the job in process against moto, the invariant after
each scenario.
"""

import json
import os
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from campaign_pipeline.clock import utcnow
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import SqsQueue
from campaign_pipeline.services.preview import QueueLimit, build_preview, load_campaign
from campaign_pipeline.store.records import Outcomes
from campaign_pipeline.store.suppressions import Added
from tests.conftest import assert_one_line_error, run_cli
from tests.integration.test_job import run_job
from tests.support.campaigns import add_recipients, add_template_campaign
from tests.support.fault_proxy import Call, FaultProxy
from tests.support.invariant import check_campaign_invariant

ORG = "org-1"  # add_template_campaign's organization
A, B, C = "+15550000001", "+15550000002", "+15550000003"


def test_adding_counts_what_was_present_and_never_narrows_a_scope(store: CampaignStore) -> None:
    suppressions = store.suppressions
    assert suppressions.add(ORG, [A, B], "marketing", "replied STOP", "test") == Added(2, 0)
    assert suppressions.add(ORG, [B, C, C], "all", None, "test") == Added(1, 1)
    assert suppressions.add(ORG, [B], "marketing", None, "test") == Added(0, 1)
    listed = {s.phone_number: s for s in suppressions.listed(ORG)}
    assert {number: s.scope for number, s in listed.items()} == {
        A: "marketing",
        B: "all",
        C: "all",
    }
    assert listed[A].reason == "replied STOP" and listed[A].source == "test"
    assert listed[A].created_at.tzinfo is not None
    # Another organization's list is its own.
    assert suppressions.listed("org-2") == []
    assert suppressions.remove(ORG, [A, "+15559999999"]) == 1
    assert [s.phone_number for s in suppressions.listed(ORG)] == [B, C]


def test_matching_holds_marketing_for_marketing_campaigns_and_all_for_every_one(
    store: CampaignStore,
) -> None:
    store.suppressions.add(ORG, [A], "marketing", "stop", "test")
    store.suppressions.add(ORG, [B], "all", None, "test")
    store.suppressions.add("org-2", [C], "all", None, "test")
    asked = [A, B, C, "+15559999999"]
    marketing = store.suppressions.matching(ORG, asked, "marketing")
    utility = store.suppressions.matching(ORG, asked, "utility")
    assert sorted(marketing["phone_number"]) == [A, B]
    assert utility["phone_number"].to_list() == [B]


def test_a_send_asks_for_recent_suppressions_of_its_own_pending_numbers_by_the_database_clock(
    store: CampaignStore,
) -> None:
    campaign_id = add_template_campaign(store)
    store.campaigns.add_recipients(
        campaign_id, [{"phone_number": number, "name": "R"} for number in (A, B)]
    )
    store.claims.claim(campaign_id, "run-1", 60)
    store.suppressions.add(ORG, [A, B, C], "all", None, "test")
    # B is handled already: no longer pending, so no longer asked about.
    (b_id,) = [
        row["id"]
        for row in store.audience.pending_chunks(campaign_id, 10).__next__().iter_rows(named=True)
        if row["phone_number"] == B
    ]
    handled = Outcomes()
    handled.add_sent([b_id], ["m-1"])
    store.audience.record_outcomes(campaign_id, "run-1", handled, 60)

    recent, now = store.suppressions.added_for_pending(ORG, campaign_id, "marketing")
    assert recent["phone_number"].to_list() == [A]
    assert abs(now - utcnow()) < timedelta(minutes=1)
    later, _ = store.suppressions.added_for_pending(
        ORG, campaign_id, "marketing", now + timedelta(seconds=5)
    )
    assert later.is_empty()


def test_many_numbers_are_looked_up_in_slices(store: CampaignStore) -> None:
    """More numbers than SQLite binds to one statement."""
    numbers = [f"+1555{i:07d}" for i in range(25_000)]
    assert store.suppressions.add(ORG, numbers[::2], "all", None, "test") == Added(12_500, 0)
    assert store.suppressions.matching(ORG, numbers, "utility").height == 12_500
    assert store.suppressions.remove(ORG, numbers) == 12_500


@pytest.fixture
def cli_env(sqlite_store: CampaignStore, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "CAMPAIGN_DATABASE_URL": str(sqlite_store.database_url)} | {
        "DAGSTER_HOME": str(tmp_path)
    }


def test_suppress_add_list_and_remove_from_the_command_line(
    sqlite_store: CampaignStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    added = run_cli(
        "suppress", "add", ORG, A, B, "--reason", "replied STOP", env=cli_env, cwd=tmp_path
    )
    assert added.returncode == 0, added.stderr
    assert added.stdout == f"organization {ORG}: 2 suppressed (marketing), 0 already suppressed\n"
    again = run_cli("suppress", "add", ORG, B, "--scope", "all", env=cli_env, cwd=tmp_path)
    assert again.stdout == f"organization {ORG}: 0 suppressed (all), 1 already suppressed\n"

    listed = json.loads(
        run_cli("suppress", "list", ORG, "--json", env=cli_env, cwd=tmp_path).stdout
    )
    assert [(s["phone_number"], s["scope"], s["reason"]) for s in listed] == [
        (A, "marketing", "replied STOP"),
        (B, "all", "replied STOP"),
    ]
    assert set(listed[0]) == {"phone_number", "scope", "reason", "source", "created_at"}
    assert listed[0]["source"].endswith("(cli)")
    table = run_cli("suppress", "list", ORG, env=cli_env, cwd=tmp_path).stdout.splitlines()
    assert table[0] == f"organization {ORG}: 2 suppressed"
    assert table[1].split()[:2] == [A, "marketing"]

    removed = run_cli("suppress", "remove", ORG, A, C, env=cli_env, cwd=tmp_path)
    assert removed.stdout == f"organization {ORG}: 1 removed, 1 were not suppressed\n"
    assert [s.phone_number for s in sqlite_store.suppressions.listed(ORG)] == [B]


@pytest.mark.parametrize(
    ("arguments", "fragments"),
    [
        ((ORG, A, "5550000002"), ("phone number 2 (***02) is not E.164", "must start with '+'")),
        ((ORG, "+1555000000x"), ("phone number 1", "only the digits 0-9")),
        (("org 1", A), ("organization id 'org 1' is not usable",)),
    ],
)
def test_one_malformed_input_refuses_the_whole_command_in_one_line(
    sqlite_store: CampaignStore,
    cli_env: dict[str, str],
    tmp_path: Path,
    arguments: tuple[str, ...],
    fragments: tuple[str, ...],
) -> None:
    result = run_cli("suppress", "add", *arguments, env=cli_env, cwd=tmp_path)
    line = assert_one_line_error(result, *fragments)
    assert "5550000002" not in line
    assert sqlite_store.suppressions.listed(ORG) == []


def test_a_missing_database_is_one_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    env = cli_env | {"CAMPAIGN_DATABASE_URL": f"sqlite:///{tmp_path / 'nowhere.db'}"}
    for arguments in (("list", ORG), ("add", ORG, A), ("remove", ORG, A)):
        result = run_cli("suppress", *arguments, env=env, cwd=tmp_path)
        assert_one_line_error(result, "does not exist", "init-db")


def test_suppress_import_adds_good_lines_and_names_the_rest_by_line_number(
    sqlite_store: CampaignStore, cli_env: dict[str, str], tmp_path: Path
) -> None:
    sqlite_store.suppressions.add(ORG, [C], "marketing", None, "test")
    csv_file = tmp_path / "optouts.csv"
    csv_file.write_text(
        "name,phone_number\n"  # line 1
        f"Ana,{A}\n"
        "Bo,15550000002\n"  # line 3: no +
        f"Cy,{C}\n"  # already suppressed
        "\n"
        f"Ana again,{A}\n"  # a duplicate of line 2
        "Di,+1555000000x\n"  # line 7
        f"Ed,{B}\n"
    )
    result = run_cli(
        "suppress", "import", ORG, str(csv_file), "--scope", "all", env=cli_env, cwd=tmp_path
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout == (
        f"organization {ORG} from {csv_file}: 2 added, 2 already present, 2 rejected\n"
    )
    assert result.stderr.splitlines() == [
        f"campaign-pipeline: {csv_file}: line 3: phone number must start with '+' (E.164)",
        f"campaign-pipeline: {csv_file}: line 7: phone number may contain only the digits 0-9 "
        "after '+'",
    ]
    listed = {s.phone_number: s for s in sqlite_store.suppressions.listed(ORG)}
    assert {n: s.scope for n, s in listed.items()} == {A: "all", B: "all", C: "all"}
    assert listed[A].source is not None and listed[A].source.startswith("import optouts.csv")

    plain = tmp_path / "numbers.txt"
    plain.write_text(f"{A}\n+15550000004\n")
    clean = run_cli("suppress", "import", ORG, str(plain), env=cli_env, cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.endswith(": 1 added, 1 already present, 0 rejected\n")

    missing = run_cli(
        "suppress", "import", ORG, str(tmp_path / "nope.csv"), env=cli_env, cwd=tmp_path
    )
    assert_one_line_error(missing, "cannot read", "nope.csv", "nothing was added")
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"phone_number\n\xff\xfe+1555\n")
    assert_one_line_error(
        run_cli("suppress", "import", ORG, str(binary), env=cli_env, cwd=tmp_path),
        "is not UTF-8 text",
        "nothing was added",
    )
    assert len(sqlite_store.suppressions.listed(ORG)) == 4


@pytest.mark.parametrize(
    ("category", "scope", "skipped"),
    [
        ("marketing", "marketing", True),
        (None, "marketing", True),  # no category is marketing
        ("utility", "marketing", False),
        ("utility", "all", True),
        ("authentication", "all", True),
    ],
)
def test_a_suppressed_recipient_is_failed_as_opted_out_instead_of_queued(
    store: CampaignStore,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: object,
    category: str | None,
    scope: str,
    skipped: bool,
) -> None:
    campaign_id = add_template_campaign(store, category=category)
    add_recipients(store, campaign_id, 20)
    suppressed = ["+15550000003", "+15550000017"]
    store.suppressions.add(ORG, suppressed, scope, "replied STOP to +15550000003", "test")
    store.suppressions.add("org-2", ["+15550000004"], "all", None, "test")
    queue = make_sqs_queue(fifo=False)
    preview = build_preview(store, load_campaign(store, campaign_id), QueueLimit(262_144, "test"))
    assert preview.as_dict()["skipped"]["opted_out"] == (2 if skipped else 0)

    result = run_job(store, queue, campaign_id)

    assert result.success
    report = check_campaign_invariant(store, campaign_id, sqs_client, queue.queue_url, fifo=False)
    if not skipped:
        assert (report.queued, report.failed) == (20, 0)
        return
    assert (report.queued, report.failed) == (18, 2)
    assert set(report.failure_codes.values()) == {"opted_out"}
    reason = next(iter(report.failure_reasons.values()))
    scope_text = "marketing" if scope == "marketing" else "every campaign"
    assert reason.startswith(f"opted out: suppressed for {scope_text} since 20")
    assert reason.endswith(" UTC (replied STOP to ***03)")
    assert store.audience.failed_by_code(campaign_id) == {"opted_out": 2}


def test_a_suppression_added_mid_send_holds_for_every_batch_handed_out_after_it(
    postgres_store: CampaignStore,
    sqs_endpoint: str,
    make_sqs_queue: Callable[..., SqsQueue],
    sqs_client: object,
) -> None:
    """While the 3rd of 20 slow batches is in flight, the last ten recipients' numbers and an
    already queued one are suppressed: the ten are failed as opted_out, the queued one stays."""
    store = postgres_store
    campaign_id = add_template_campaign(store)
    add_recipients(store, campaign_id, 200)
    by_id = sorted(
        (row["id"], row["phone_number"])
        for row in store.audience.pending_chunks(campaign_id, 200).__next__().iter_rows(named=True)
    )
    late = [number for _, number in by_id[-10:]]
    added: list[float] = []

    def hook(call: Call, stage: str) -> None:
        if call.action == "SendMessageBatch" and call.number == 3 and stage == "received":
            store.suppressions.add(ORG, [*late, by_id[0][1]], "all", "replied STOP", "test")
            added.append(time.monotonic())

    with FaultProxy(sqs_endpoint, delay_seconds=0.15, hook=hook) as slow:
        queue = make_sqs_queue(fifo=False, endpoint=slow.url, max_concurrent_batches=1)
        result = run_job(store, queue, campaign_id, recipients_per_chunk=200)

    assert result.success
    assert added, "the suppression was never added"
    report = check_campaign_invariant(store, campaign_id, sqs_client, queue.queue_url, fifo=False)
    late_ids = {id_ for id_, _ in by_id[-10:]}
    assert report.failure_codes == dict.fromkeys(late_ids, "opted_out")
    assert all(
        reason.startswith("opted out: suppressed for every campaign since ")
        for reason in report.failure_reasons.values()
    )
    # Queued before the suppression: it stays queued.
    assert by_id[0][0] in report.bodies
    assert report.queued == 190
