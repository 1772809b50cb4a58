"""Claims and leases: which run may send for a campaign, for how long, and how it lets go.

A run claims a campaign (`asset_generated` becomes `ready_to_launch`) or resumes it, and holds
a lease it renews while sending. Every write here is a compare-and-set on the campaign's
status or on the lease's run id, so two runs never both hold a campaign.
"""

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from campaign_pipeline.clock import utcnow
from campaign_pipeline.errors import CampaignBusy, CampaignNotFound
from campaign_pipeline.lifecycle import refusal
from campaign_pipeline.store.audience import Audience, count_by_status, count_columns
from campaign_pipeline.store.records import Claim, campaign_message
from campaign_pipeline.store.schema import campaigns


class Claims:
    """A campaign's claim and lease, for the runs that send it."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def claim(
        self,
        campaign_id: str,
        run_id: str,
        lease_seconds: float,
        take_over_from: str | None = None,
        send_now: bool = False,
    ) -> Claim:
        """Take the campaign for `run_id`: `asset_generated` becomes `ready_to_launch`.

        A campaign already `ready_to_launch` is resumed, unless another run's lease is live.
        `take_over_from` names a run known to be gone whose live lease may be taken: the
        takeover is a compare-and-set on that run id, so it fails if the lease changed hands.
        A campaign whose `send_at` is ahead is taken only with `send_now`. The campaign's
        counts are set from its recipients, for live progress.
        Raises `CampaignNotFound`, `CampaignStopped` (paused, cancelled), `CampaignScheduled`,
        `CampaignNotProcessable` or `CampaignBusy`.
        """
        now = utcnow()
        lease = {
            "lease_run_id": run_id,
            "lease_expires_at": now + timedelta(seconds=lease_seconds),
            "last_run_id": run_id,
            "resumed_at": None,
        }
        by_id = campaigns.c.id == campaign_id
        counts: dict[str, int] = {}
        due = (
            [] if send_now else [sa.or_(campaigns.c.send_at.is_(None), campaigns.c.send_at <= now)]
        )
        with self.engine.begin() as connection:
            # Lock the row first (PostgreSQL): otherwise a commit between the updates below and
            # the final read could show a row neither update saw. SQLite has one writer anyway.
            connection.execute(sa.select(campaigns.c.id).where(by_id).with_for_update())
            claimed = connection.execute(
                campaigns.update()
                .where(by_id, campaigns.c.status == "asset_generated", *due)
                .values(
                    status="ready_to_launch",
                    version=campaigns.c.version + 1,
                    updated_at=now,
                    resume_attempts=0,
                    **lease,
                )
            ).rowcount
            resumed = False
            if not claimed:
                free = [
                    campaigns.c.lease_run_id.is_(None),
                    campaigns.c.lease_run_id == run_id,
                    campaigns.c.lease_expires_at < now,
                ]
                if take_over_from:
                    free.append(campaigns.c.lease_run_id == take_over_from)
                resumed = bool(
                    connection.execute(
                        campaigns.update()
                        .where(
                            by_id,
                            campaigns.c.status == "ready_to_launch",
                            sa.or_(*free),
                        )
                        .values(**lease)
                    ).rowcount
                )
            if claimed or resumed:
                counts = count_by_status(connection, campaign_id)
                connection.execute(campaigns.update().where(by_id).values(**count_columns(counts)))
            row = connection.execute(sa.select(campaigns).where(by_id)).mappings().first()
        if row is None:
            raise CampaignNotFound(f"campaign {campaign_id} does not exist")
        if not (claimed or resumed):
            raise refusal(dict(row), now=now, send_now=send_now, run_id=run_id) or CampaignBusy(
                f"campaign {campaign_id} is being processed by run {row['lease_run_id']}",
                lease_run_id=row["lease_run_id"],
            )
        return Claim(
            message=campaign_message(row),
            name=row["name"],
            resumed=resumed,
            counts=counts,
            max_messages_per_second=row["max_messages_per_second"],
            invalid_accepted=row["invalid_accepted_at"] is not None,
        )

    def renew(self, campaign_id: str, run_id: str, lease_seconds: float) -> bool:
        """Extend the run's lease by `lease_seconds` from now; False if it no longer holds it."""
        with self.engine.begin() as connection:
            return self._extend_lease(
                connection, campaign_id, run_id, utcnow() + timedelta(seconds=lease_seconds)
            )

    def _extend_lease(
        self,
        connection: sa.Connection,
        campaign_id: str,
        run_id: str,
        lease_until: datetime,
    ) -> bool:
        return bool(
            connection.execute(
                campaigns.update()
                .where(campaigns.c.id == campaign_id, campaigns.c.lease_run_id == run_id)
                .values(lease_expires_at=lease_until)
            ).rowcount
        )

    def release(self, campaign_id: str, run_id: str) -> None:
        """Give up the run's lease, so a rerun need not wait for it to expire."""
        with self.engine.begin() as connection:
            connection.execute(
                campaigns.update()
                .where(campaigns.c.id == campaign_id, campaigns.c.lease_run_id == run_id)
                .values(lease_run_id=None, lease_expires_at=None)
            )

    def finish(self, campaign_id: str, run_id: str) -> dict[str, int]:
        """Store the campaign's final counts, release the lease; returns the counts.

        With nothing left pending, the last error and the resume attempts are cleared.
        """
        counts = Audience(self.engine).counts(campaign_id)
        values: dict[str, Any] = {
            **count_columns(counts),
            "processed_at": utcnow(),
            "lease_run_id": None,
            "lease_expires_at": None,
        }
        if not counts["pending"]:
            values |= {
                "last_error": None,
                "last_error_at": None,
                "last_error_run_id": None,
                "resume_attempts": 0,
            }
        with self.engine.begin() as connection:
            connection.execute(
                campaigns.update()
                .where(campaigns.c.id == campaign_id, campaigns.c.lease_run_id == run_id)
                .values(**values)
            )
        return counts

    def hold_back(self, campaign_id: str, run_id: str, reason: str, actor: str) -> bool:
        """Pause the campaign a run holds, with `reason` as its last error, and release it.

        For the guards: a campaign that must not be sent as it is. One compare-and-set on the
        run's lease, so nothing else has taken the campaign meanwhile. Returns whether it did.
        """
        now = utcnow()
        with self.engine.begin() as connection:
            return bool(
                connection.execute(
                    campaigns.update()
                    .where(
                        campaigns.c.id == campaign_id,
                        campaigns.c.lease_run_id == run_id,
                        campaigns.c.status.in_(("ready_to_launch", "paused")),
                    )
                    .values(
                        status="paused",
                        version=campaigns.c.version + 1,
                        updated_at=now,
                        paused_at=now,
                        paused_by=actor,
                        resumed_at=None,
                        last_error=reason,
                        last_error_at=now,
                        last_error_run_id=run_id,
                        lease_run_id=None,
                        lease_expires_at=None,
                    )
                ).rowcount
            )

    def fail(self, campaign_id: str, reason: str) -> None:
        """Mark the campaign `failed` with `reason`; its recipients are left as they are."""
        with self.engine.begin() as connection:
            connection.execute(
                campaigns.update()
                .where(campaigns.c.id == campaign_id)
                .values(
                    status="failed",
                    last_error=reason,
                    last_error_at=utcnow(),
                    version=campaigns.c.version + 1,
                    updated_at=utcnow(),
                    lease_run_id=None,
                    lease_expires_at=None,
                )
            )

    def record_run_failure(
        self, campaign_id: str, run_id: str, error: str, failed_at: datetime
    ) -> bool:
        """Write a failed run's error onto the campaign and release the lease if the run held it.

        Recipients are left as they are. The error is written when the run is the campaign's
        last run, or when no run holds the campaign and none finished it after `failed_at`:
        a stale failure (a duplicate run refused at the claim, a run a later run has already
        made good) never overwrites a newer state. Returns whether the error was written.
        """
        by_id = campaigns.c.id == campaign_id
        with self.engine.begin() as connection:
            recorded = connection.execute(
                campaigns.update()
                .where(
                    by_id,
                    sa.or_(
                        campaigns.c.last_run_id == run_id,
                        sa.and_(
                            campaigns.c.lease_run_id.is_(None),
                            sa.or_(
                                campaigns.c.processed_at.is_(None),
                                campaigns.c.processed_at < failed_at,
                            ),
                        ),
                    ),
                )
                .values(
                    last_error=error,
                    last_error_at=failed_at,
                    last_error_run_id=run_id,
                    # A resumed campaign whose run failed is the recovery sensor's again.
                    resumed_at=None,
                )
            ).rowcount
            connection.execute(
                campaigns.update()
                .where(by_id, campaigns.c.lease_run_id == run_id)
                .values(lease_run_id=None, lease_expires_at=None)
            )
        return bool(recorded)

    def status(self, campaign_id: str) -> str | None:
        """The campaign's status now (None if it does not exist); a sending run polls it."""
        with self.engine.connect() as connection:
            return connection.execute(
                sa.select(campaigns.c.status).where(campaigns.c.id == campaign_id)
            ).scalar()
