"""The campaign store on SQLite and PostgreSQL: schema, claim and lease, streaming, outcomes."""

import json
import time
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from campaign_pipeline.errors import CampaignBusy, CampaignNotFound, CampaignNotProcessable
from campaign_pipeline.failure_codes import FailureCode
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.store.engine import ROWS_PER_STATEMENT, normalise_database_url
from campaign_pipeline.store.records import Outcomes, StalledCampaign, WriteAck
from campaign_pipeline.store.schema import campaign_audience, campaigns
from tests.support.campaigns import add_recipients, add_template_campaign

INJECTION = "Robert'); DROP TABLE campaign_audience;--"


def outcomes(sent: dict[str, str] | None = None, failed: dict[str, str] | None = None) -> Outcomes:
    result = Outcomes()
    result.add_sent(list(sent or {}), list((sent or {}).values()))
    result.add_failed(list(failed or {}), list((failed or {}).values()), FailureCode.SQS_REJECTED)
    return result


def statuses(store: CampaignStore, campaign_id: str) -> dict[str, str]:
    with store.engine.connect() as connection:
        rows = connection.execute(
            sa.select(campaign_audience.c.id, campaign_audience.c.status).where(
                campaign_audience.c.campaign_id == campaign_id
            )
        )
        return dict(rows.all())


def test_create_schema_is_idempotent(store: CampaignStore) -> None:
    """Creating the schema again keeps tables and data."""
    campaign_id = add_template_campaign(store)
    store.create_schema()
    assert store.campaigns.get(campaign_id) is not None


def test_plain_postgresql_urls_use_psycopg_3() -> None:
    """A plain postgresql:// URL is given the psycopg 3 driver."""
    assert normalise_database_url("postgresql://u@h:5432/db") == "postgresql+psycopg://u@h:5432/db"
    assert normalise_database_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_database_url("sqlite:///x.db") == "sqlite:///x.db"


def test_plain_postgresql_url_connects(postgres_url: str) -> None:
    """The store works when given the URL exactly as a user writes it."""
    assert postgres_url.startswith("postgresql://")
    store = CampaignStore(database_url=postgres_url)
    store.create_schema()
    try:
        assert store.audience.counts("00000000-0000-0000-0000-000000000000") == {
            "pending": 0,
            "ready_to_send": 0,
            "failed": 0,
        }
    finally:
        store.engine.dispose()


def test_claim_moves_asset_generated_to_ready_to_launch(store: CampaignStore) -> None:
    """The claim is a compare-and-set that bumps the version and takes the lease."""
    campaign_id = add_template_campaign(store)
    claim = store.claims.claim(campaign_id, "run-1", lease_seconds=60)
    row = store.campaigns.get(campaign_id)
    assert not claim.resumed
    assert claim.message.template_name == "hello_world"
    assert (row["status"], row["version"], row["lease_run_id"]) == ("ready_to_launch", 1, "run-1")


def test_claim_refuses_while_another_run_holds_the_lease(store: CampaignStore) -> None:
    """A second run cannot take a campaign whose lease is live."""
    campaign_id = add_template_campaign(store)
    store.claims.claim(campaign_id, "run-1", lease_seconds=60)
    with pytest.raises(CampaignBusy, match="run-1"):
        store.claims.claim(campaign_id, "run-2", lease_seconds=60)


def test_claim_resumes_after_release_or_expiry(store: CampaignStore) -> None:
    """A released or expired lease lets a later run resume the ready_to_launch campaign."""
    campaign_id = add_template_campaign(store)
    store.claims.claim(campaign_id, "run-1", lease_seconds=60)
    store.claims.release(campaign_id, "run-1")
    assert store.claims.claim(campaign_id, "run-2", lease_seconds=0.01).resumed
    time.sleep(0.05)
    assert store.claims.claim(campaign_id, "run-3", lease_seconds=60).resumed


@pytest.mark.parametrize("status", ["draft", "failed", "launched"])
def test_claim_refuses_other_statuses(store: CampaignStore, status: str) -> None:
    """Only asset_generated (or a resumable ready_to_launch) campaigns are processed."""
    campaign_id = add_template_campaign(store, status=status)
    with pytest.raises(CampaignNotProcessable, match=status):
        store.claims.claim(campaign_id, "run-1", lease_seconds=60)
    assert store.campaigns.get(campaign_id)["status"] == status


def test_claim_of_unknown_campaign(store: CampaignStore) -> None:
    """An unknown id is reported as such."""
    with pytest.raises(CampaignNotFound):
        store.claims.claim("00000000-0000-0000-0000-000000000000", "run-1", lease_seconds=60)


def test_pending_recipients_stream_in_chunks_by_id(store: CampaignStore) -> None:
    """Chunks cover every pending recipient once, in id order, none larger than asked."""
    campaign_id = add_template_campaign(store)
    add_recipients(store, campaign_id, 25)
    chunks = list(store.audience.pending_chunks(campaign_id, chunk_size=10))
    ids = [i for chunk in chunks for i in chunk["id"].to_list()]
    assert [chunk.height for chunk in chunks] == [10, 10, 5]
    assert ids == sorted(statuses(store, campaign_id))


def test_one_write_of_more_outcomes_than_one_statement_takes_records_every_one(
    store: CampaignStore,
) -> None:
    """Above ROWS_PER_STATEMENT the write is several statements in one transaction: each
    recipient gets its own outcome, and the counts move by all of them."""
    campaign_id = add_template_campaign(store)
    total = 2 * ROWS_PER_STATEMENT + 7
    add_recipients(store, campaign_id, total)
    store.claims.claim(campaign_id, "run-1", lease_seconds=60)
    ids = sorted(statuses(store, campaign_id))
    sent = {id_: f"m-{i}" for i, id_ in enumerate(ids) if i % 3}
    failed = {id_: f"reason {i}" for i, id_ in enumerate(ids) if not i % 3}
    ack = store.audience.record_outcomes(
        campaign_id, "run-1", outcomes(sent=sent, failed=failed), 60
    )
    assert ack.lease_held
    with store.engine.connect() as connection:
        rows = {
            r.id: (r.status, r.sqs_message_id, r.failure_reason)
            for r in connection.execute(
                sa.select(campaign_audience).where(campaign_audience.c.campaign_id == campaign_id)
            )
        }
    assert rows == {id_: ("ready_to_send", m, None) for id_, m in sent.items()} | {
        id_: ("failed", None, reason) for id_, reason in failed.items()
    }
    assert store.audience.counts(campaign_id) == {
        "pending": 0,
        "ready_to_send": len(sent),
        "failed": len(failed),
    }
    campaign = store.campaigns.get(campaign_id)
    assert (campaign["queued_count"], campaign["failed_count"], campaign["pending_count"]) == (
        len(sent),
        len(failed),
        0,
    )


def test_outcomes_are_written_once_and_never_overwritten(store: CampaignStore) -> None:
    """Recording is guarded by status 'pending': a later outcome cannot replace a recorded one."""
    campaign_id = add_template_campaign(store)
    add_recipients(store, campaign_id, 3)
    store.claims.claim(campaign_id, "run-1", lease_seconds=60)
    first, second, third = sorted(statuses(store, campaign_id))
    assert store.audience.record_outcomes(
        campaign_id, "run-1", outcomes(sent={first: "m-1"}, failed={second: INJECTION}), 60
    ).lease_held
    store.audience.record_outcomes(campaign_id, "run-1", outcomes(failed={first: "x"}), 60)
    with store.engine.connect() as connection:
        rows = {
            r.id: r
            for r in connection.execute(
                sa.select(campaign_audience).where(campaign_audience.c.campaign_id == campaign_id)
            )
        }
    assert (rows[first].status, rows[first].sqs_message_id) == ("ready_to_send", "m-1")
    assert (rows[first].failure_reason, rows[first].failure_code) == (None, None)
    assert (rows[second].status, rows[second].failure_reason) == ("failed", INJECTION)
    assert rows[second].failure_code == "sqs_rejected"
    assert rows[third].status == "pending"


def test_each_failed_recipient_is_recorded_with_its_code_and_counted_by_it(
    store: CampaignStore,
) -> None:
    """The code goes with the reason, in one write of several codes; counts by code include
    recipients failed before codes existed, as `unknown`."""
    campaign_id = add_template_campaign(store)
    add_recipients(store, campaign_id, 5)
    store.claims.claim(campaign_id, "run-1", lease_seconds=60)
    first, second, third, fourth, fifth = sorted(statuses(store, campaign_id))
    written = Outcomes()
    written.add_sent([first], ["m-1"])
    written.add_failed([second, third], ["bad number", "bad media URL"], FailureCode.INVALID)
    written.add_failed([fourth], ["SQS rejected the message (X)"], FailureCode.SQS_REJECTED)
    store.audience.record_outcomes(campaign_id, "run-1", written, 60)
    with store.engine.begin() as connection:
        # As a database written before failure codes holds a failed recipient.
        connection.execute(
            campaign_audience.update()
            .where(campaign_audience.c.id == fifth)
            .values(status="failed", failure_reason="from before codes")
        )
        codes = dict(
            connection.execute(
                sa.select(campaign_audience.c.id, campaign_audience.c.failure_code).where(
                    campaign_audience.c.campaign_id == campaign_id
                )
            )
            .tuples()
            .all()
        )
    assert codes == {
        first: None,
        second: "invalid",
        third: "invalid",
        fourth: "sqs_rejected",
        fifth: None,
    }
    assert store.audience.failed_by_code(campaign_id) == {
        "invalid": 2,
        "sqs_rejected": 1,
        "unknown": 1,
    }
    assert store.audience.failed_by_code(add_template_campaign(store)) == {}


def test_outcome_writes_move_the_campaign_counts(store: CampaignStore) -> None:
    """Live progress: every write moves queued/failed/pending by what it changed, no more."""
    campaign_id = add_template_campaign(store)
    add_recipients(store, campaign_id, 4)
    claim = store.claims.claim(campaign_id, "run-1", lease_seconds=60)
    assert claim.counts == {"pending": 4, "ready_to_send": 0, "failed": 0}
    first, second, third, _ = sorted(statuses(store, campaign_id))

    def counts() -> tuple[int, int, int]:
        row = store.campaigns.get(campaign_id)
        return row["queued_count"], row["failed_count"], row["pending_count"]

    assert counts() == (0, 0, 4)
    ack = store.audience.record_outcomes(
        campaign_id, "run-1", outcomes(sent={first: "m-1", second: "m-2"}, failed={third: "x"}), 60
    )
    assert ack == WriteAck(lease_held=True, status="ready_to_launch")
    assert counts() == (2, 1, 1)
    # Rewriting recorded recipients changes nothing, counts included.
    store.audience.record_outcomes(
        campaign_id, "run-1", outcomes(failed={first: "y", second: "z"}), 60
    )
    assert counts() == (2, 1, 1)
    store.control.apply(campaign_id, "pause", "tester")
    assert store.audience.record_outcomes(campaign_id, "run-1", outcomes(), 60).status == "paused"


def test_recording_reports_a_lost_lease(store: CampaignStore) -> None:
    """A run whose lease was taken over is told to stop, but what it sent is still recorded."""
    campaign_id = add_template_campaign(store)
    add_recipients(store, campaign_id, 1)
    store.claims.claim(campaign_id, "run-1", lease_seconds=0.01)
    time.sleep(0.05)
    store.claims.claim(campaign_id, "run-2", lease_seconds=60)
    (recipient,) = statuses(store, campaign_id)
    assert not store.audience.record_outcomes(
        campaign_id, "run-1", outcomes(sent={recipient: "m-1"}), lease_seconds=60
    ).lease_held
    assert statuses(store, campaign_id)[recipient] == "ready_to_send"


def test_finish_stores_counts_and_releases(store: CampaignStore) -> None:
    """The campaign row gets its final counts and its lease is released."""
    campaign_id = add_template_campaign(store)
    add_recipients(store, campaign_id, 3)
    store.claims.claim(campaign_id, "run-1", lease_seconds=60)
    first, second, _ = sorted(statuses(store, campaign_id))
    store.audience.record_outcomes(
        campaign_id, "run-1", outcomes(sent={first: "m"}, failed={second: "r"}), 60
    )
    assert store.claims.finish(campaign_id, "run-1") == {
        "pending": 1,
        "ready_to_send": 1,
        "failed": 1,
    }
    row = store.campaigns.get(campaign_id)
    assert (row["queued_count"], row["failed_count"], row["pending_count"]) == (1, 1, 1)
    assert row["lease_run_id"] is None


def test_campaigns_to_process_oldest_first_with_limit(store: CampaignStore) -> None:
    """The sensor's query: asset_generated campaigns, longest waiting first, up to a limit."""
    ids = []
    for minute in (3, 1, 2):
        waiting_since = datetime(2026, 1, 1, 0, minute, tzinfo=UTC)
        ids.append(add_template_campaign(store, updated_at=waiting_since))
    add_template_campaign(store, status="draft")
    found = store.sweeps.campaigns_to_process(limit=2)
    assert [c.id for c in found] == [ids[1], ids[2]]
    assert all(c.organization_id == "org-1" and c.version == 0 for c in found)


def test_injection_strings_are_stored_verbatim(store: CampaignStore) -> None:
    """Every text field takes SQL fragments as plain data."""
    campaign_id = add_template_campaign(
        store, template_name=INJECTION, caption=INJECTION, media_url=INJECTION
    )
    store.campaigns.add_recipients(campaign_id, [{"phone_number": INJECTION, "name": INJECTION}])
    row = store.campaigns.get(campaign_id)
    assert (row["template_name"], row["caption"]) == (INJECTION, INJECTION)
    (chunk,) = store.audience.pending_chunks(campaign_id, 10)
    assert chunk.row(0)[1:3] == (INJECTION, INJECTION)


HOSTILE = ['say "hi", then\nleave', "", "עברית 😀 \\ back", "a,b;c\r\nd", None]


def test_pending_recipients_read_back_exactly(store: CampaignStore) -> None:
    """Quotes, commas, newlines, unicode, empty and null values survive the read (COPY on PG)."""
    campaign_id = add_template_campaign(store)
    store.campaigns.add_recipients(
        campaign_id,
        [
            {"id": f"r{i}", "phone_number": text, "name": text, "attributes": {"k": text}}
            for i, text in enumerate(HOSTILE)
        ],
    )
    (chunk,) = store.audience.pending_chunks(campaign_id, chunk_size=100)
    assert chunk["phone_number"].to_list() == HOSTILE
    assert chunk["name"].to_list() == HOSTILE
    assert [json.loads(a)["k"] for a in chunk["attributes"]] == HOSTILE


@pytest.mark.parametrize(
    ("count", "size", "expected"), [(10, 4, [4, 4, 2]), (8, 4, [4, 4]), (3, 5, [3])]
)
def test_id_ranges_split_pending_recipients(
    store: CampaignStore, count: int, size: int, expected: list[int]
) -> None:
    """Ranges are consecutive, cover every pending recipient once and hold `size` each."""
    campaign_id = add_template_campaign(store)
    add_recipients(store, campaign_id, count)
    ranges = store.audience.id_ranges(campaign_id, size)
    chunks = [
        [
            i
            for chunk in store.audience.pending_chunks(campaign_id, 3, id_range)
            for i in chunk["id"]
        ]
        for id_range in ranges
    ]
    assert [len(ids) for ids in chunks] == expected
    assert [i for ids in chunks for i in ids] == sorted(statuses(store, campaign_id))


def test_create_schema_adds_columns_an_older_database_lacks(store: CampaignStore) -> None:
    """init-db on a database made before the recovery columns, the campaign's category and the
    recipients' failure codes adds them, keeping the rows."""
    campaign_id = add_template_campaign(store)
    add_recipients(store, campaign_id, 2)
    with store.engine.begin() as connection:
        for column in ("resume_attempts", "last_error_at", "last_error_run_id", "category"):
            connection.exec_driver_sql(f"ALTER TABLE campaigns DROP COLUMN {column}")
        connection.exec_driver_sql("ALTER TABLE campaign_audience DROP COLUMN failure_code")
    store.create_schema()
    row = store.campaigns.get(campaign_id)
    assert (row["resume_attempts"], row["last_error_at"], row["last_error_run_id"]) == (
        0,
        None,
        None,
    )
    assert row["category"] is None
    assert store.audience.counts(campaign_id)["pending"] == 2
    assert store.audience.failed_by_code(campaign_id) == {}


def test_takeover_is_a_compare_and_set_on_the_gone_run(store: CampaignStore) -> None:
    """A live lease is taken over only from the run named as gone, and says who holds it."""
    campaign_id = add_template_campaign(store)
    store.claims.claim(campaign_id, "run-1", lease_seconds=60)
    with pytest.raises(CampaignBusy) as busy:
        store.claims.claim(campaign_id, "run-2", lease_seconds=60, take_over_from="run-0")
    assert busy.value.lease_run_id == "run-1"
    assert store.claims.claim(
        campaign_id, "run-2", lease_seconds=60, take_over_from="run-1"
    ).resumed
    assert store.campaigns.get(campaign_id)["lease_run_id"] == "run-2"
    with pytest.raises(CampaignBusy, match="run-2"):
        store.claims.claim(campaign_id, "run-3", lease_seconds=60, take_over_from="run-1")


def test_run_failure_is_recorded_and_its_lease_released(store: CampaignStore) -> None:
    """The error, time and run land on the campaign; recipients and status stay as they were."""
    campaign_id = add_template_campaign(store)
    add_recipients(store, campaign_id, 2)
    store.claims.claim(campaign_id, "run-1", lease_seconds=60)
    first, _ = sorted(statuses(store, campaign_id))
    store.audience.record_outcomes(campaign_id, "run-1", outcomes(sent={first: "m-1"}), 60)
    before = statuses(store, campaign_id)
    failed_at = datetime.now(UTC)
    assert store.claims.record_run_failure(campaign_id, "run-1", "SQS failed", failed_at)
    row = store.campaigns.get(campaign_id)
    assert (row["last_error"], row["last_error_run_id"]) == ("SQS failed", "run-1")
    recorded_at = row["last_error_at"]
    assert (recorded_at if recorded_at.tzinfo else recorded_at.replace(tzinfo=UTC)) == failed_at
    assert (row["status"], row["lease_run_id"]) == ("ready_to_launch", None)
    assert statuses(store, campaign_id) == before


def test_a_stale_failure_does_not_overwrite_a_later_run(store: CampaignStore) -> None:
    """A failure older than the run that finished the campaign, or of a refused run, is dropped."""
    campaign_id = add_template_campaign(store)
    failed_at = datetime.now(UTC)
    store.claims.claim(campaign_id, "run-2", lease_seconds=60)
    assert not store.claims.record_run_failure(campaign_id, "run-3", "busy", datetime.now(UTC))
    assert store.campaigns.get(campaign_id)["lease_run_id"] == "run-2"
    store.claims.finish(campaign_id, "run-2")
    assert not store.claims.record_run_failure(campaign_id, "run-1", "old news", failed_at)
    assert store.campaigns.get(campaign_id)["last_error"] is None


def test_finish_with_nothing_pending_clears_error_and_attempts(store: CampaignStore) -> None:
    """A run that leaves nothing pending clears the recorded failure and the resume count."""
    campaign_id = add_template_campaign(store)
    add_recipients(store, campaign_id, 1)
    store.claims.claim(campaign_id, "run-1", lease_seconds=60)
    store.claims.record_run_failure(campaign_id, "run-1", "boom", datetime.now(UTC))
    (stalled,) = store.sweeps.stalled(10, busy_campaign_ids=[], live_run_ids=[])
    assert store.sweeps.start_resume_attempt(stalled)
    store.claims.claim(campaign_id, "run-2", lease_seconds=60)
    store.claims.finish(campaign_id, "run-2")
    assert store.campaigns.get(campaign_id)["resume_attempts"] == 1
    (recipient,) = statuses(store, campaign_id)
    store.claims.claim(campaign_id, "run-3", lease_seconds=60)
    store.audience.record_outcomes(campaign_id, "run-3", outcomes(sent={recipient: "m"}), 60)
    store.claims.finish(campaign_id, "run-3")
    row = store.campaigns.get(campaign_id)
    assert (row["last_error"], row["last_error_at"], row["last_error_run_id"]) == (None,) * 3
    assert row["resume_attempts"] == 0


def test_stalled_campaigns_have_pending_recipients_and_no_live_run(store: CampaignStore) -> None:
    """ready_to_launch with pending recipients, not busy, no live lease holder; oldest first."""

    def ready(minute: int, recipients: int = 1, lease: str | None = None) -> str:
        campaign_id = add_template_campaign(store)
        add_recipients(store, campaign_id, recipients)
        store.claims.claim(campaign_id, lease or f"run-{campaign_id}", lease_seconds=60)
        with store.engine.begin() as connection:
            connection.execute(
                campaigns.update()
                .where(campaigns.c.id == campaign_id)
                .values(updated_at=datetime(2026, 1, 1, 0, minute, tzinfo=UTC))
            )
        return campaign_id

    oldest, older, old = ready(1), ready(2), ready(3)
    busy, live_lease, nothing_pending = ready(0), ready(0, lease="live"), ready(0, recipients=0)
    add_recipients(store, add_template_campaign(store), 1)
    failed = add_template_campaign(store, status="failed")
    add_recipients(store, failed, 1)

    found = store.sweeps.stalled(10, busy_campaign_ids=[busy], live_run_ids=["live"])
    assert [c.id for c in found] == [oldest, older, old]
    # Its lease (60 s) has not expired: the caller asks Dagster about the run holding it.
    assert found[0] == StalledCampaign(oldest, "org-1", 1, 0, None, f"run-{oldest}")
    assert len(store.sweeps.stalled(2, [busy], ["live"])) == 2
    everything = {c.id for c in store.sweeps.stalled(10, [], [])}
    assert everything == {oldest, older, old, busy, live_lease}
    assert nothing_pending not in everything


def test_resume_attempt_and_give_up_are_compare_and_sets(store: CampaignStore) -> None:
    """Each applies only to the campaign as it was read: no double count, no late give-up."""
    campaign_id = add_template_campaign(store)
    add_recipients(store, campaign_id, 1)
    store.claims.claim(campaign_id, "run-1", lease_seconds=0.001)
    (seen,) = store.sweeps.stalled(10, [], [])
    assert store.sweeps.start_resume_attempt(seen)
    assert not store.sweeps.start_resume_attempt(seen)
    assert not store.sweeps.give_up(seen, "too late")
    (again,) = store.sweeps.stalled(10, [], [])
    assert again.resume_attempts == 1
    assert store.sweeps.give_up(again, "gave up")
    row = store.campaigns.get(campaign_id)
    assert (row["status"], row["last_error"], row["version"]) == ("failed", "gave up", 2)
    assert store.sweeps.stalled(10, [], []) == []
