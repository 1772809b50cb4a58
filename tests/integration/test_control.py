"""Operators' controls on a campaign, on SQLite and PostgreSQL: pause, resume, cancel, schedule.

Touches `CampaignStore.control` / `schedule` (compare-and-sets in `campaign_control.py`), the
claim's refusals of paused, cancelled and scheduled campaigns, `campaigns_to_process` and
`next_scheduled`, the processing sensor's SkipReason, `create_schema` upgrading a database made
before these columns existed, and, on PostgreSQL, threads racing commands and claims.
"""

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
import sqlalchemy as sa

from campaign_pipeline.clock import as_utc
from campaign_pipeline.defs.sensors import asset_generated_campaigns_sensor
from campaign_pipeline.errors import (
    CampaignControlError,
    CampaignControlRefused,
    CampaignNotFound,
    CampaignNotProcessable,
    CampaignScheduled,
    CampaignStopped,
)
from campaign_pipeline.failure_codes import FailureCode
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.store.records import Outcomes
from campaign_pipeline.store.schema import CAMPAIGN_STATUSES
from tests.conftest import POSTGRES_ADMIN_URL

ORGANIZATION_ID = "123e4567-e89b-12d3-a456-426614174000"
UNKNOWN_ID = "00000000-0000-0000-0000-000000000000"
ACTOR = "alice@ops-host (cli)"
NEW_COLUMNS = (
    "send_at",
    "paused_at",
    "paused_by",
    "cancelled_at",
    "cancelled_by",
    "resumed_at",
    "resumed_by",
)
NEW_INDEXES = ("ix_campaigns_status_send_at", "ix_campaigns_resumed_at")


def add_campaign(
    store: CampaignStore, status: str = "asset_generated", recipients: int = 2, **fields: Any
) -> str:
    campaign_id = store.campaigns.add(
        organization_id=ORGANIZATION_ID,
        name=fields.pop("name", "control test"),
        status=status,
        message_type="text",
        message_content="Hello {{name}}",
        **fields,
    )
    store.campaigns.add_recipients(
        campaign_id,
        [{"phone_number": f"+1555{i:07d}", "name": f"R{i}"} for i in range(recipients)],
    )
    return campaign_id


def row(store: CampaignStore, campaign_id: str) -> dict[str, Any]:
    campaign = store.campaigns.get(campaign_id)
    assert campaign is not None
    return campaign


def recipient_ids(store: CampaignStore, campaign_id: str) -> list[str]:
    chunk = next(store.audience.pending_chunks(campaign_id, 10_000))
    return sorted(chunk["id"].to_list())


def handle_a_recipient(store: CampaignStore, campaign_id: str, run_id: str) -> None:
    """Record an outcome (failed) for one recipient, as the run holding the campaign would."""
    outcomes = Outcomes()
    outcomes.add_failed(recipient_ids(store, campaign_id)[:1], ["bad number"], FailureCode.INVALID)
    store.audience.record_outcomes(campaign_id, run_id, outcomes, lease_seconds=60)


def to_process(store: CampaignStore) -> set[str]:
    return {campaign.id for campaign in store.sweeps.campaigns_to_process(100)}


def evaluate(store: CampaignStore) -> dg.SensorResult | dg.SkipReason:
    with dg.build_sensor_context(resources={"campaign_store": store}) as context:
        return asset_generated_campaigns_sensor(context)


def assert_recent(moment: datetime | None, since: datetime) -> None:
    assert moment is not None
    assert (
        since - timedelta(seconds=1) <= as_utc(moment) <= datetime.now(UTC) + timedelta(seconds=1)
    )


# Pause and resume


@pytest.mark.parametrize("status", ["asset_generated", "ready_to_launch"])
def test_pause_records_who_and_when_and_bumps_the_version(
    store: CampaignStore, status: str
) -> None:
    """A pause moves the campaign to paused, bumps its version once and says who did it."""
    campaign_id = add_campaign(store, status=status, version=3)
    before = datetime.now(UTC)
    result = store.control.apply(campaign_id, "pause", ACTOR)
    campaign = row(store, campaign_id)
    assert (result.before, result.after, result.changed) == (status, "paused", True)
    assert campaign_id in result.message and "paused" in result.message
    assert (campaign["status"], campaign["version"], campaign["paused_by"]) == (
        "paused",
        4,
        ACTOR,
    )
    assert_recent(campaign["paused_at"], before)
    assert_recent(campaign["updated_at"], before)
    assert campaign["resumed_at"] is None


def test_pause_of_a_paused_campaign_changes_nothing(store: CampaignStore) -> None:
    """A second pause is no error and keeps the first pause's actor, time and version."""
    campaign_id = add_campaign(store)
    store.control.apply(campaign_id, "pause", "first")
    first = row(store, campaign_id)
    result = store.control.apply(campaign_id, "pause", "second")
    assert (result.before, result.after, result.changed) == ("paused", "paused", False)
    assert "already paused" in result.message
    again = row(store, campaign_id)
    assert (again["version"], again["paused_by"], again["paused_at"]) == (
        first["version"],
        "first",
        first["paused_at"],
    )


def test_pause_reports_the_run_holding_the_lease(store: CampaignStore) -> None:
    """Pausing a campaign a run is sending names that run, for the operator to watch it stop."""
    campaign_id = add_campaign(store)
    store.claims.claim(campaign_id, "run-1", lease_seconds=60)
    assert store.control.apply(campaign_id, "pause", ACTOR).lease_run_id == "run-1"
    # The run keeps its lease until it stops and releases it itself.
    assert row(store, campaign_id)["lease_run_id"] == "run-1"


def test_resume_with_nothing_handled_starts_over(store: CampaignStore) -> None:
    """No outcome and no live lease: resume goes back to asset_generated for a fresh claim."""
    campaign_id = add_campaign(store, resume_attempts=2)
    store.control.apply(campaign_id, "pause", "first")
    before = datetime.now(UTC)
    result = store.control.apply(campaign_id, "resume", ACTOR)
    campaign = row(store, campaign_id)
    assert (result.before, result.after, result.changed) == ("paused", "asset_generated", True)
    assert (campaign["status"], campaign["version"]) == ("asset_generated", 2)
    assert (campaign["resumed_by"], campaign["resume_attempts"]) == (ACTOR, 0)
    assert_recent(campaign["resumed_at"], before)
    # Who paused it stays on record.
    assert campaign["paused_by"] == "first"
    assert campaign_id in to_process(store)


def test_resume_of_a_claimed_campaign_whose_lease_expired_starts_over(
    store: CampaignStore,
) -> None:
    """A claim that sent nothing and whose lease ran out counts as nothing handled."""
    campaign_id = add_campaign(store)
    store.claims.claim(campaign_id, "run-1", lease_seconds=0.01)
    time.sleep(0.05)
    store.control.apply(campaign_id, "pause", ACTOR)
    assert store.control.apply(campaign_id, "resume", ACTOR).after == "asset_generated"


@pytest.mark.parametrize("outcome", ["ready_to_send", "failed"])
def test_resume_after_an_outcome_continues_as_ready_to_launch(
    store: CampaignStore, outcome: str
) -> None:
    """A recipient with an outcome: resume continues as ready_to_launch with resumed_at set."""
    campaign_id = add_campaign(store)
    store.claims.claim(campaign_id, "run-1", lease_seconds=60)
    first = recipient_ids(store, campaign_id)[0]
    outcomes = Outcomes()
    if outcome == "ready_to_send":
        outcomes.add_sent([first], ["m-1"])
    else:
        outcomes.add_failed([first], ["bad number"], FailureCode.INVALID)
    store.audience.record_outcomes(campaign_id, "run-1", outcomes, 60)
    store.claims.release(campaign_id, "run-1")
    store.control.apply(campaign_id, "pause", ACTOR)
    before = datetime.now(UTC)
    result = store.control.apply(campaign_id, "resume", ACTOR)
    campaign = row(store, campaign_id)
    assert result.after == campaign["status"] == "ready_to_launch"
    assert_recent(campaign["resumed_at"], before)
    assert campaign_id in to_process(store)


def test_resume_while_a_run_holds_a_live_lease_continues(store: CampaignStore) -> None:
    """A run still holding its lease may be recording outcomes: resume keeps ready_to_launch."""
    campaign_id = add_campaign(store)
    store.claims.claim(campaign_id, "run-1", lease_seconds=60)
    store.control.apply(campaign_id, "pause", ACTOR)
    result = store.control.apply(campaign_id, "resume", ACTOR)
    assert (result.after, result.lease_run_id) == ("ready_to_launch", "run-1")
    # Not started again while that run holds it; once it lets go, the sensor starts it.
    assert campaign_id not in to_process(store)
    store.claims.release(campaign_id, "run-1")
    assert campaign_id in to_process(store)


# Cancel


@pytest.mark.parametrize("status", [s for s in CAMPAIGN_STATUSES if s != "cancelled"])
def test_cancel_from_any_status(store: CampaignStore, status: str) -> None:
    """Every status but cancelled can be cancelled; who and when are recorded."""
    campaign_id = add_campaign(store, status=status)
    before = datetime.now(UTC)
    result = store.control.apply(campaign_id, "cancel", ACTOR)
    campaign = row(store, campaign_id)
    assert (result.before, result.after, result.changed) == (status, "cancelled", True)
    assert (campaign["status"], campaign["version"], campaign["cancelled_by"]) == (
        "cancelled",
        1,
        ACTOR,
    )
    assert_recent(campaign["cancelled_at"], before)
    assert campaign["resumed_at"] is None


def test_cancel_clears_a_resume(store: CampaignStore) -> None:
    """A resumed campaign that is cancelled is no longer handed to the processing sensor."""
    campaign_id = add_campaign(store)
    store.claims.claim(campaign_id, "run-1", lease_seconds=60)
    handle_a_recipient(store, campaign_id, "run-1")
    store.claims.release(campaign_id, "run-1")
    store.control.apply(campaign_id, "pause", ACTOR)
    assert store.control.apply(campaign_id, "resume", ACTOR).after == "ready_to_launch"
    assert campaign_id in to_process(store)
    store.control.apply(campaign_id, "cancel", ACTOR)
    assert row(store, campaign_id)["resumed_at"] is None
    assert campaign_id not in to_process(store)


def test_cancel_of_a_cancelled_campaign_changes_nothing(store: CampaignStore) -> None:
    """A second cancel is no error and keeps the first one's actor and version."""
    campaign_id = add_campaign(store)
    store.control.apply(campaign_id, "cancel", "first")
    result = store.control.apply(campaign_id, "cancel", "second")
    assert (result.after, result.changed) == ("cancelled", False)
    assert "already cancelled" in result.message
    campaign = row(store, campaign_id)
    assert (campaign["version"], campaign["cancelled_by"]) == (1, "first")


# Refusals

REFUSED = [
    ("pause", "draft"),
    ("pause", "cancelled"),
    ("pause", "failed"),
    ("resume", "draft"),
    ("resume", "asset_generated"),
    ("resume", "ready_to_launch"),
    ("resume", "cancelled"),
    ("resume", "failed"),
]


@pytest.mark.parametrize(("command", "status"), REFUSED)
def test_refused_commands_raise_one_line_naming_campaign_and_status(
    store: CampaignStore, command: str, status: str
) -> None:
    """A command that does not apply raises CampaignControlRefused and changes nothing."""
    campaign_id = add_campaign(store, status=status)
    with pytest.raises(CampaignControlRefused) as refused:
        store.control.apply(campaign_id, command, ACTOR)  # type: ignore[arg-type]
    message = str(refused.value)
    assert "\n" not in message
    assert campaign_id in message and repr(status) in message
    campaign = row(store, campaign_id)
    assert (campaign["status"], campaign["version"]) == (status, 0)
    assert campaign["paused_by"] is campaign["resumed_by"] is campaign["cancelled_by"] is None


@pytest.mark.parametrize("command", ["pause", "resume", "cancel", "schedule"])
def test_unknown_campaign_is_reported(store: CampaignStore, command: str) -> None:
    """A command for an id no campaign has raises CampaignNotFound naming the id."""
    with pytest.raises(CampaignNotFound, match=UNKNOWN_ID):
        if command == "schedule":
            store.control.schedule(UNKNOWN_ID, datetime.now(UTC), ACTOR)
        else:
            store.control.apply(UNKNOWN_ID, command, ACTOR)  # type: ignore[arg-type]


# The claim


@pytest.mark.parametrize("command", ["pause", "cancel"])
@pytest.mark.parametrize("claimed_before", [False, True], ids=["waiting", "claimed"])
def test_claim_refuses_a_stopped_campaign(
    store: CampaignStore, command: str, claimed_before: bool
) -> None:
    """A paused or cancelled campaign is not claimed (CampaignStopped names who stopped it)."""
    campaign_id = add_campaign(store)
    if claimed_before:
        store.claims.claim(campaign_id, "run-1", lease_seconds=60)
        store.claims.release(campaign_id, "run-1")
    store.control.apply(campaign_id, command, ACTOR)  # type: ignore[arg-type]
    version = row(store, campaign_id)["version"]
    with pytest.raises(CampaignStopped) as stopped:
        store.claims.claim(campaign_id, "run-2", lease_seconds=60)
    status = "paused" if command == "pause" else "cancelled"
    assert f"is {status} (by {ACTOR} at " in str(stopped.value)
    assert "\n" not in str(stopped.value)
    campaign = row(store, campaign_id)
    assert (campaign["status"], campaign["version"], campaign["lease_run_id"]) == (
        status,
        version,
        None,
    )


def test_a_stopped_campaign_is_not_processable_to_older_callers(
    store: CampaignStore,
) -> None:
    """CampaignStopped is a CampaignNotProcessable, which callers caught before it existed."""
    campaign_id = add_campaign(store)
    store.control.apply(campaign_id, "pause", ACTOR)
    with pytest.raises(CampaignNotProcessable):
        store.claims.claim(campaign_id, "run-1", lease_seconds=60)


def test_claim_waits_for_send_at_unless_sent_now(store: CampaignStore) -> None:
    """A future send_at makes the claim raise CampaignScheduled; send_now claims at once."""
    send_at = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0)
    campaign_id = add_campaign(store, send_at=send_at)
    with pytest.raises(CampaignScheduled) as scheduled:
        store.claims.claim(campaign_id, "run-1", lease_seconds=60)
    assert f"{send_at:%Y-%m-%d %H:%M:%S} UTC" in str(scheduled.value)
    assert (row(store, campaign_id)["status"], row(store, campaign_id)["version"]) == (
        "asset_generated",
        0,
    )
    claim = store.claims.claim(campaign_id, "run-1", lease_seconds=60, send_now=True)
    assert not claim.resumed
    assert row(store, campaign_id)["status"] == "ready_to_launch"


def test_claim_of_a_campaign_whose_send_at_has_come(store: CampaignStore) -> None:
    """A send_at in the past is due: the claim takes the campaign."""
    campaign_id = add_campaign(store, send_at=datetime.now(UTC) - timedelta(seconds=1))
    store.claims.claim(campaign_id, "run-1", lease_seconds=60)
    assert row(store, campaign_id)["lease_run_id"] == "run-1"


def test_claim_of_a_resumed_campaign_clears_resumed_at(store: CampaignStore) -> None:
    """The claim takes a resumed ready_to_launch campaign back from the processing sensor."""
    campaign_id = add_campaign(store)
    store.claims.claim(campaign_id, "run-1", lease_seconds=60)
    store.control.apply(campaign_id, "pause", ACTOR)
    store.control.apply(campaign_id, "resume", ACTOR)
    store.claims.release(campaign_id, "run-1")
    assert campaign_id in to_process(store)
    assert store.claims.claim(campaign_id, "run-2", lease_seconds=60).resumed
    campaign = row(store, campaign_id)
    assert (campaign["resumed_at"], campaign["lease_run_id"]) == (None, "run-2")
    assert campaign_id not in to_process(store)


# What the processing sensor starts


def test_campaigns_to_process_respects_send_at_and_stops(store: CampaignStore) -> None:
    """Due asset_generated campaigns are listed; future send_at, paused and cancelled are not."""
    now = datetime.now(UTC)
    unscheduled = add_campaign(store)
    due = add_campaign(store, send_at=now - timedelta(minutes=1))
    future = add_campaign(store, send_at=now + timedelta(hours=1))
    paused = add_campaign(store)
    store.control.apply(paused, "pause", ACTOR)
    cancelled = add_campaign(store)
    store.control.apply(cancelled, "cancel", ACTOR)
    # Claimed and left by a crashed run: the recovery sensor's, not this one's.
    stalled = add_campaign(store)
    store.claims.claim(stalled, "run-1", lease_seconds=60)
    store.claims.release(stalled, "run-1")
    listed = to_process(store)
    assert listed == {unscheduled, due}
    assert not {future, paused, cancelled, stalled} & listed


def test_campaigns_to_process_lists_resumed_ones_once_their_lease_is_free(
    store: CampaignStore,
) -> None:
    """A resumed ready_to_launch campaign is listed once no run holds a live lease on it."""
    campaign_id = add_campaign(store)
    store.claims.claim(campaign_id, "run-1", lease_seconds=1.0)
    store.control.apply(campaign_id, "pause", ACTOR)
    # The lease is live: the run may still be recording outcomes.
    assert store.control.apply(campaign_id, "resume", ACTOR).after == "ready_to_launch"
    assert campaign_id not in to_process(store)
    expires = as_utc(row(store, campaign_id)["lease_expires_at"])
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.05)
    (listed,) = store.sweeps.campaigns_to_process(10)
    assert (listed.id, listed.version, listed.name) == (campaign_id, 3, "control test")


def test_next_scheduled_is_the_earliest_future_send_at(store: CampaignStore) -> None:
    """next_scheduled names the asset_generated campaign whose send_at comes next, else None."""
    assert store.sweeps.next_scheduled() is None
    now = datetime.now(UTC).replace(microsecond=0)
    add_campaign(store, send_at=now - timedelta(minutes=5))
    assert store.sweeps.next_scheduled() is None
    later = add_campaign(store, name="later", send_at=now + timedelta(hours=3))
    sooner = add_campaign(store, name="sooner", send_at=now + timedelta(hours=1))
    paused = add_campaign(store, send_at=now + timedelta(minutes=1))
    store.control.apply(paused, "pause", ACTOR)
    scheduled = store.sweeps.next_scheduled()
    assert scheduled is not None
    assert (scheduled.id, scheduled.name, scheduled.send_at) == (
        sooner,
        "sooner",
        now + timedelta(hours=1),
    )
    assert scheduled.send_at.tzinfo is not None
    store.control.apply(sooner, "cancel", ACTOR)
    assert store.sweeps.next_scheduled().id == later


def test_sensor_skip_names_the_next_scheduled_campaign(store: CampaignStore) -> None:
    """Nothing due: the SkipReason names the next scheduled campaign, its id and its time."""
    send_at = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    campaign_id = add_campaign(store, name="Black Friday", send_at=send_at)
    add_campaign(store, name="Later", send_at=send_at + timedelta(days=1))
    result = evaluate(store)
    assert isinstance(result, dg.SkipReason)
    message = result.skip_message or ""
    assert "'Black Friday'" in message and campaign_id in message
    assert f"{send_at:%Y-%m-%d %H:%M:%S} UTC" in message


def test_sensor_starts_a_resumed_campaign_under_a_new_run_key(store: CampaignStore) -> None:
    """A resumed campaign gets a run keyed by its new version, so it is not taken as a rerun."""
    campaign_id = add_campaign(store)
    (first,) = evaluate(store).run_requests
    store.claims.claim(campaign_id, "run-1", lease_seconds=60)
    handle_a_recipient(store, campaign_id, "run-1")
    store.control.apply(campaign_id, "pause", ACTOR)
    store.claims.finish(campaign_id, "run-1")
    assert isinstance(evaluate(store), dg.SkipReason)
    store.control.apply(campaign_id, "resume", ACTOR)
    (second,) = evaluate(store).run_requests
    assert second.run_key == f"{campaign_id}:v{row(store, campaign_id)['version']}"
    assert second.run_key != first.run_key
    assert second.partition_key == campaign_id


# Schedule


@pytest.mark.parametrize("status", ["draft", "asset_generated", "paused"])
def test_schedule_sets_and_clears_send_at(store: CampaignStore, status: str) -> None:
    """A campaign not started yet can be scheduled and unscheduled; each bumps the version."""
    campaign_id = add_campaign(store, status=status)
    send_at = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0)
    result = store.control.schedule(campaign_id, send_at, ACTOR)
    assert (result.before, result.after, result.changed) == (status, status, True)
    assert f"{send_at:%Y-%m-%d %H:%M:%S} UTC" in result.message
    campaign = row(store, campaign_id)
    assert (as_utc(campaign["send_at"]), campaign["version"], campaign["status"]) == (
        send_at,
        1,
        status,
    )
    cleared = store.control.schedule(campaign_id, None, ACTOR)
    assert "at once" in cleared.message
    assert (row(store, campaign_id)["send_at"], row(store, campaign_id)["version"]) == (None, 2)


def test_scheduling_holds_a_waiting_campaign_back_until_cleared(store: CampaignStore) -> None:
    """A campaign scheduled for later is not processed; cleared, it is due again."""
    campaign_id = add_campaign(store)
    store.control.schedule(campaign_id, datetime.now(UTC) + timedelta(hours=1), ACTOR)
    assert campaign_id not in to_process(store)
    assert store.sweeps.next_scheduled().id == campaign_id
    store.control.schedule(campaign_id, None, ACTOR)
    assert campaign_id in to_process(store)
    assert store.sweeps.next_scheduled() is None


@pytest.mark.parametrize("status", ["ready_to_launch", "cancelled", "failed"])
def test_schedule_refuses_a_started_or_final_campaign(store: CampaignStore, status: str) -> None:
    """Once started, cancelled or failed a campaign cannot be scheduled; nothing changes."""
    campaign_id = add_campaign(store, status=status)
    with pytest.raises(CampaignControlRefused) as refused:
        store.control.schedule(campaign_id, datetime.now(UTC) + timedelta(hours=1), ACTOR)
    assert campaign_id in str(refused.value) and repr(status) in str(refused.value)
    assert (row(store, campaign_id)["send_at"], row(store, campaign_id)["version"]) == (None, 0)


def test_a_scheduled_paused_campaign_resumes_at_its_time(store: CampaignStore) -> None:
    """Paused before it started, scheduled, resumed: it waits for its send_at again."""
    campaign_id = add_campaign(store)
    store.control.apply(campaign_id, "pause", ACTOR)
    store.control.schedule(campaign_id, datetime.now(UTC) + timedelta(hours=1), ACTOR)
    assert store.control.apply(campaign_id, "resume", ACTOR).after == "asset_generated"
    assert campaign_id not in to_process(store)
    assert store.sweeps.next_scheduled().id == campaign_id


def test_a_started_campaign_is_not_scheduled_for_nothing(store: CampaignStore) -> None:
    """Schedule on a paused campaign that had started is refused: its resume continues it."""
    campaign_id = add_campaign(store)
    store.claims.claim(campaign_id, "run-1", lease_seconds=60)
    handle_a_recipient(store, campaign_id, "run-1")
    store.claims.release(campaign_id, "run-1")
    store.control.apply(campaign_id, "pause", ACTOR)
    with pytest.raises(CampaignControlRefused, match="after it started sending"):
        store.control.schedule(campaign_id, datetime.now(UTC) + timedelta(hours=1), ACTOR)


def test_schedule_keeps_the_instant_of_a_time_in_another_zone(store: CampaignStore) -> None:
    """12:00 at UTC+02:00 is 10:00 UTC: stored, listed and reported as that instant."""
    campaign_id = add_campaign(store)
    send_at = datetime(2031, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    result = store.control.schedule(campaign_id, send_at, ACTOR)
    scheduled = store.sweeps.next_scheduled()
    assert scheduled is not None and scheduled.send_at == send_at
    assert "2031-01-01 10:00:00 UTC" in result.message


# init-db on a database made before these columns


def old_schema() -> sa.MetaData:
    """The tables as `git show 1775aff:campaign_pipeline/schema.py` defined them."""
    old = sa.MetaData()
    sa.Table(
        "campaigns",
        old,
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("organization_id", sa.String(36), nullable=False),
        sa.Column("name", sa.Text, nullable=False, server_default=""),
        sa.Column("status", sa.String(32), nullable=False, server_default="draft"),
        sa.Column("message_type", sa.String(16), nullable=False),
        sa.Column("template_name", sa.Text),
        sa.Column("template_language", sa.Text),
        sa.Column("template_parameters", sa.JSON(none_as_null=True)),
        sa.Column("message_content", sa.Text),
        sa.Column("media_url", sa.Text),
        sa.Column("caption", sa.Text),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("version", sa.Integer, nullable=False, server_default="0"),
        sa.Column("queued_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failed_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("pending_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("last_error_at", sa.DateTime(timezone=True)),
        sa.Column("last_error_run_id", sa.String(64)),
        sa.Column("last_run_id", sa.String(64)),
        sa.Column("resume_attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("processed_at", sa.DateTime(timezone=True)),
        sa.Column("lease_run_id", sa.String(64)),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
        sa.Index("ix_campaigns_status_updated_at", "status", "updated_at"),
    )
    sa.Table(
        "campaign_audience",
        old,
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("campaign_id", sa.String(36), sa.ForeignKey("campaigns.id"), nullable=False),
        sa.Column("phone_number", sa.Text),
        sa.Column("name", sa.Text),
        sa.Column("attributes", sa.JSON(none_as_null=True)),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("failure_reason", sa.Text),
        sa.Column("sqs_message_id", sa.String(100)),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Index("ix_campaign_audience_campaign_status_id", "campaign_id", "status", "id"),
    )
    return old


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of a database with no tables: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.db'}"
        return
    request.getfixturevalue("postgres_url")  # skipped, as the others, without a server
    name = f"campaign_pipeline_upgrade_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_create_schema_upgrades_an_old_database_in_place(empty_database_url: str) -> None:
    """init-db on a database of the previous schema adds the new columns and indexes, keeps rows."""
    store = CampaignStore(database_url=empty_database_url)
    old = old_schema()
    try:
        old.create_all(store.engine)
        campaign_id = str(uuid.uuid4())
        with store.engine.begin() as connection:
            connection.execute(
                old.tables["campaigns"]
                .insert()
                .values(
                    id=campaign_id,
                    organization_id=ORGANIZATION_ID,
                    name="from before",
                    status="asset_generated",
                    message_type="text",
                    message_content="Hi",
                    version=7,
                )
            )
            connection.execute(
                old.tables["campaign_audience"].insert(),
                [
                    {"id": str(uuid.uuid4()), "campaign_id": campaign_id, "phone_number": "+1555"}
                    for _ in range(3)
                ],
            )
        inspector = sa.inspect(store.engine)
        assert not set(NEW_COLUMNS) & {c["name"] for c in inspector.get_columns("campaigns")}

        store.create_schema()
        store.create_schema()  # and again: nothing left to add

        inspector = sa.inspect(store.engine)
        types = {c["name"]: c["type"] for c in inspector.get_columns("campaigns")}
        assert set(NEW_COLUMNS) <= set(types)
        if store.engine.dialect.name == "postgresql":
            # Times with their zone, as the other times of the table.
            assert all(types[name].timezone for name in NEW_COLUMNS if name.endswith("_at"))
        assert set(NEW_INDEXES) <= {i["name"] for i in inspector.get_indexes("campaigns")}
        campaign = row(store, campaign_id)
        assert (campaign["name"], campaign["status"], campaign["version"]) == (
            "from before",
            "asset_generated",
            7,
        )
        assert all(campaign[column] is None for column in NEW_COLUMNS)
        assert store.audience.counts(campaign_id)["pending"] == 3
        # The upgraded database works with the new commands.
        assert campaign_id in to_process(store)
        store.control.apply(campaign_id, "pause", ACTOR)
        store.control.apply(campaign_id, "resume", ACTOR)
        store.control.schedule(campaign_id, datetime.now(UTC) + timedelta(hours=1), ACTOR)
        assert store.sweeps.next_scheduled().id == campaign_id
        with pytest.raises(CampaignScheduled):
            store.claims.claim(campaign_id, "run-1", lease_seconds=60)
        assert store.claims.claim(campaign_id, "run-1", lease_seconds=60, send_now=True).counts == {
            "pending": 3,
            "ready_to_send": 0,
            "failed": 0,
        }
    finally:
        store.engine.dispose()


# Races, on PostgreSQL

RACE_THREADS = 12
RACE_STEPS = 3
RACE_ROUNDS = 6
# Each command and each claim either succeeds or raises one of these.
DOCUMENTED = (CampaignControlError, CampaignNotFound, CampaignNotProcessable)


def race_round(
    store: CampaignStore, campaign_id: str, operations: list[list[str]]
) -> tuple[list[tuple[str, Any]], list[BaseException]]:
    """Run thread i's operations[i] step by step, every thread starting each step at once.

    Returns (operation, ControlResult or Claim or documented error) per operation done, and
    the exceptions nobody documents.
    """
    barrier = threading.Barrier(len(operations))
    lock = threading.Lock()
    done: list[tuple[str, Any]] = []
    unexpected: list[BaseException] = []

    def work(thread: int) -> None:
        for step, operation in enumerate(operations[thread]):
            barrier.wait(timeout=30)
            try:
                if operation == "claim":
                    outcome: Any = store.claims.claim(campaign_id, f"run-{thread}-{step}", 60)
                else:
                    outcome = store.control.apply(campaign_id, operation, ACTOR)  # type: ignore[arg-type]
            except DOCUMENTED as error:
                outcome = error
            except Exception as error:  # what the test is looking for
                with lock:
                    unexpected.append(error)
                continue
            with lock:
                done.append((operation, outcome))

    with ThreadPoolExecutor(len(operations)) as pool:
        for future in [pool.submit(work, thread) for thread in range(len(operations))]:
            future.result()
    return done, unexpected


def race_operations(seed: int, cancel: bool) -> list[list[str]]:
    """Pauses, resumes and claims spread over threads and steps, and maybe one cancel."""
    mix = ["pause", "resume", "claim"]
    operations = [
        [mix[(seed + thread + step) % 3] for step in range(RACE_STEPS)]
        for thread in range(RACE_THREADS)
    ]
    if cancel:
        operations[seed % RACE_THREADS][seed % RACE_STEPS] = "cancel"
    return operations


@pytest.mark.parametrize("start", ["asset_generated", "paused", "ready_to_launch"])
def test_racing_commands_and_claims_stay_consistent(
    postgres_store: CampaignStore, start: str
) -> None:
    """Concurrent pause/resume/cancel/claim: a cancel wins, each change bumps the version once."""
    store = postgres_store
    unexpected: list[BaseException] = []
    for seed in range(RACE_ROUNDS):
        campaign_id = add_campaign(store)
        if start == "paused":
            store.control.apply(campaign_id, "pause", "setup")
        elif start == "ready_to_launch":
            store.claims.claim(campaign_id, "setup-run", lease_seconds=60)
            store.claims.release(campaign_id, "setup-run")
        initial = row(store, campaign_id)["version"]
        cancel = seed % 2 == 0
        done, surprises = race_round(store, campaign_id, race_operations(seed, cancel))
        unexpected += surprises
        campaign = row(store, campaign_id)
        results = [(op, out) for op, out in done if not isinstance(out, Exception)]
        errors = [out for _, out in done if isinstance(out, Exception)]
        claims = [out for op, out in results if op == "claim"]
        changes = [out for op, out in results if op != "claim" and out.changed]
        # Fewer racers than a compare-and-set's attempts: none gives up.
        assert not [e for e in errors if type(e) is CampaignControlError], errors
        # A claim of asset_generated bumps the version too; a claim resuming a free
        # ready_to_launch campaign does not.
        fresh_claims = [claim for claim in claims if not claim.resumed]
        assert campaign["version"] == initial + len(changes) + len(fresh_claims), (
            campaign["status"],
            Counter(op for op, _ in results),
        )
        # Every lease is 60 s long: one run at most holds the campaign.
        assert len(claims) <= 1
        assert not [change for change in changes if change.before == "cancelled"]
        if cancel:
            assert (campaign["status"], campaign["cancelled_by"]) == ("cancelled", ACTOR)
            assert campaign["resumed_at"] is None
        else:
            assert campaign["status"] in ("asset_generated", "ready_to_launch", "paused")
        if campaign["status"] == "ready_to_launch":
            # Only a claim holds it there, or a resume because a claim's lease is live.
            assert claims or start == "ready_to_launch"
    assert not unexpected, [f"{type(e).__name__}: {e}" for e in unexpected]
