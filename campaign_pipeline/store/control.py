"""Operators' commands on a campaign (pause, resume, cancel, schedule), as compare-and-sets.

Each command reads the campaign, decides with `lifecycle.decide`, and writes the new status
only if the status and version are still the ones it read; otherwise it reads again. A run's
claim, both sensors and another operator therefore never undo a command, nor it theirs.
"""

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from campaign_pipeline.errors import (
    CampaignControlError,
    CampaignControlRefused,
    CampaignNotFound,
)
from campaign_pipeline.lifecycle import Command, decide
from campaign_pipeline.store.records import ControlResult
from campaign_pipeline.store.schema import campaign_audience, campaigns

# Compare-and-set attempts before giving up on a campaign that keeps changing under us.
MAX_ATTEMPTS = 20
SCHEDULABLE_STATUSES = frozenset({"draft", "asset_generated", "paused"})


def _read(connection: sa.Connection, campaign_id: str) -> Any:
    row = connection.execute(
        sa.select(
            campaigns.c.status,
            campaigns.c.version,
            campaigns.c.lease_run_id,
            campaigns.c.lease_expires_at,
        ).where(campaigns.c.id == campaign_id)
    ).first()
    if row is None:
        raise CampaignNotFound(f"campaign {campaign_id} does not exist")
    return row


def _handled(connection: sa.Connection, campaign_id: str, row: Any, now: datetime) -> bool:
    """Some recipient has an outcome, or a run holds a live lease and may be recording one."""
    expires = row.lease_expires_at
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    if row.lease_run_id and expires is not None and expires >= now:
        return True
    return bool(
        connection.execute(
            sa.select(
                sa.exists().where(
                    campaign_audience.c.campaign_id == campaign_id,
                    campaign_audience.c.status.in_(("ready_to_send", "failed")),
                )
            )
        ).scalar()
    )


def _changes(command: Command, actor: str, now: datetime, accept_invalid: bool) -> dict[str, Any]:
    if command == "pause":
        return {"paused_at": now, "paused_by": actor, "resumed_at": None}
    if command == "resume":
        # A fresh start for the recovery sensor's bounded attempts, too.
        changes = {"resumed_at": now, "resumed_by": actor, "resume_attempts": 0}
        return changes | ({"invalid_accepted_at": now} if accept_invalid else {})
    return {"cancelled_at": now, "cancelled_by": actor, "resumed_at": None}


def _compare_and_set(
    connection: sa.Connection, campaign_id: str, row: Any, values: dict[str, Any]
) -> bool:
    return bool(
        connection.execute(
            campaigns.update()
            .where(
                campaigns.c.id == campaign_id,
                campaigns.c.status == row.status,
                campaigns.c.version == row.version,
            )
            .values(version=campaigns.c.version + 1, **values)
        ).rowcount
    )


def apply_command(
    engine: sa.Engine,
    campaign_id: str,
    command: Command,
    actor: str,
    accept_invalid: bool = False,
) -> ControlResult:
    """Pause, resume or cancel the campaign on behalf of `actor` (who, for the record).

    A resume with `accept_invalid` lifts the preflight guard: its valid recipients are sent
    however many others are invalid.

    Raises `CampaignNotFound`, `CampaignControlRefused`, or `CampaignControlError` when the
    campaign changed `MAX_ATTEMPTS` times while this was deciding.
    """
    for _ in range(MAX_ATTEMPTS):
        now = datetime.now(UTC)
        with engine.begin() as connection:
            row = _read(connection, campaign_id)
            handled = command == "resume" and _handled(connection, campaign_id, row, now)
            decision = decide(command, row.status, handled=handled)
            if decision.refused:
                raise CampaignControlRefused(f"campaign {campaign_id} {decision.message}")
            if decision.target is None:
                return ControlResult(
                    campaign_id, command, row.status, row.status, False,
                    f"campaign {campaign_id} {decision.message}", row.lease_run_id,
                )  # fmt: skip
            changes = _changes(command, actor, now, accept_invalid)
            values = {"status": decision.target, "updated_at": now, **changes}
            if _compare_and_set(connection, campaign_id, row, values):
                return ControlResult(
                    campaign_id, command, row.status, decision.target, True,
                    f"campaign {campaign_id} {decision.message} (was {row.status!r})",
                    row.lease_run_id,
                )  # fmt: skip
    raise CampaignControlError(
        f"campaign {campaign_id} kept changing while it was being {command}d; try again"
    )


def schedule(
    engine: sa.Engine, campaign_id: str, send_at: datetime | None, actor: str
) -> ControlResult:
    """Set (or, with None, clear) the campaign's `send_at`, while it has not started.

    Raises `CampaignNotFound` or `CampaignControlRefused` (a campaign already started,
    cancelled or failed).
    """
    if send_at is not None:
        # Stored as UTC: SQLite keeps a time's wall clock, not its offset. Naive means UTC.
        send_at = send_at.replace(tzinfo=send_at.tzinfo or UTC).astimezone(UTC)
    for _ in range(MAX_ATTEMPTS):
        now = datetime.now(UTC)
        with engine.begin() as connection:
            row = _read(connection, campaign_id)
            if row.status not in SCHEDULABLE_STATUSES:
                raise CampaignControlRefused(
                    f"campaign {campaign_id} is {row.status!r}; only 'draft', 'asset_generated' "
                    "or 'paused' campaigns can be scheduled"
                )
            if row.status == "paused" and _handled(connection, campaign_id, row, now):
                # Its resume continues it at once: a send time would mean nothing.
                raise CampaignControlRefused(
                    f"campaign {campaign_id} is paused after it started sending; only a "
                    "campaign that has not started can be scheduled (resume it instead)"
                )
            values = {"send_at": send_at, "updated_at": now}
            if _compare_and_set(connection, campaign_id, row, values):
                when = f"for {send_at:%Y-%m-%d %H:%M:%S} UTC" if send_at else "to start at once"
                return ControlResult(
                    campaign_id, "schedule", row.status, row.status, True,
                    f"campaign {campaign_id} scheduled {when} (status {row.status!r})",
                )  # fmt: skip
    raise CampaignControlError(f"campaign {campaign_id} kept changing; try again")


class Control:
    """Operators' commands on the campaigns of one database."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def apply(
        self, campaign_id: str, command: Command, actor: str, accept_invalid: bool = False
    ) -> ControlResult:
        """Pause, resume or cancel the campaign for `actor` (see `apply_command`)."""
        return apply_command(self.engine, campaign_id, command, actor, accept_invalid)

    def schedule(self, campaign_id: str, send_at: datetime | None, actor: str) -> ControlResult:
        """Set or clear the campaign's `send_at` (see `schedule`)."""
        return schedule(self.engine, campaign_id, send_at, actor)
