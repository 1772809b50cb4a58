"""The sensors' queries: campaigns waiting to start, the next scheduled one, stalled ones.

Each is one indexed query; what a sensor then does with a campaign is a compare-and-set on
the version it read, so a campaign that changed in between is left for the next tick.
"""

from collections.abc import Iterable

import sqlalchemy as sa

from campaign_pipeline.clock import as_utc, utcnow
from campaign_pipeline.store.records import CampaignToProcess, ScheduledCampaign, StalledCampaign
from campaign_pipeline.store.schema import campaign_audience, campaigns


class Sweeps:
    """What the sensors look for in the campaigns table at every tick."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def campaigns_to_process(self, limit: int) -> list[CampaignToProcess]:
        """Up to `limit` campaigns to start, the longest waiting first.

        Those in `asset_generated` whose `send_at` has come (or is unset), and those `resume`
        set back to `ready_to_launch` once no run holds them.
        """
        now = utcnow()
        columns = (
            campaigns.c.id,
            campaigns.c.organization_id,
            campaigns.c.version,
            campaigns.c.name,
            campaigns.c.updated_at,
        )
        # Three queries, each an index range, rather than one OR the planner cannot split: an
        # OR on send_at filtered every scheduled campaign row by row (docs/benchmarks.md).
        unscheduled = sa.select(*columns).where(
            campaigns.c.status == "asset_generated", campaigns.c.send_at.is_(None)
        )
        due = sa.select(*columns).where(
            campaigns.c.status == "asset_generated", campaigns.c.send_at <= now
        )
        resumed = sa.select(*columns).where(
            campaigns.c.resumed_at.is_not(None),
            campaigns.c.status == "ready_to_launch",
            sa.or_(campaigns.c.lease_run_id.is_(None), campaigns.c.lease_expires_at < now),
        )
        oldest = (campaigns.c.updated_at, campaigns.c.id)
        waiting = sa.union_all(
            *(
                query.order_by(*oldest).limit(limit).subquery().select()
                for query in (unscheduled, due, resumed)
            )
        ).subquery()
        query = (
            sa.select(waiting.c.id, waiting.c.organization_id, waiting.c.version, waiting.c.name)
            .order_by(waiting.c.updated_at, waiting.c.id)
            .limit(limit)
        )
        with self.engine.connect() as connection:
            return [CampaignToProcess(*row) for row in connection.execute(query)]

    def next_scheduled(self) -> ScheduledCampaign | None:
        """The `asset_generated` campaign whose `send_at` comes next, if any is ahead."""
        query = (
            sa.select(campaigns.c.id, campaigns.c.name, campaigns.c.send_at)
            .where(campaigns.c.status == "asset_generated", campaigns.c.send_at > utcnow())
            .order_by(campaigns.c.send_at)
            .limit(1)
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        if row is None:
            return None
        return ScheduledCampaign(row.id, row.name, as_utc(row.send_at) or row.send_at)

    def stalled(
        self, limit: int, busy_campaign_ids: Iterable[str], live_run_ids: Iterable[str]
    ) -> list[StalledCampaign]:
        """Up to `limit` `ready_to_launch` campaigns with pending recipients and no live run.

        `busy_campaign_ids` have a run that has not finished; a lease held by one of
        `live_run_ids` is live too. A campaign whose unexpired lease is held by any other run
        comes with that run's id, for the caller to ask Dagster whether it has finished.
        The longest untouched come first.
        """
        pending = (
            sa.exists()
            .where(
                campaign_audience.c.campaign_id == campaigns.c.id,
                campaign_audience.c.status == "pending",
            )
            .correlate(campaigns)
        )
        query = (
            sa.select(
                campaigns.c.id,
                campaigns.c.organization_id,
                campaigns.c.version,
                campaigns.c.resume_attempts,
                campaigns.c.last_error,
                sa.case(
                    (campaigns.c.lease_expires_at >= utcnow(), campaigns.c.lease_run_id),
                    else_=sa.null(),
                ),
            )
            .where(
                campaigns.c.status == "ready_to_launch",
                # Resumed by an operator: the processing sensor starts those.
                campaigns.c.resumed_at.is_(None),
                campaigns.c.id.not_in(list(busy_campaign_ids)),
                sa.or_(
                    campaigns.c.lease_run_id.is_(None),
                    campaigns.c.lease_run_id.not_in(list(live_run_ids)),
                ),
                pending,
            )
            .order_by(campaigns.c.updated_at, campaigns.c.id)
            .limit(limit)
        )
        with self.engine.connect() as connection:
            return [StalledCampaign(*row) for row in connection.execute(query)]

    def _unchanged(self, campaign: StalledCampaign) -> list[sa.ColumnElement[bool]]:
        """The campaign is still as `stalled_campaigns` saw it (for compare-and-set)."""
        return [
            campaigns.c.id == campaign.id,
            campaigns.c.status == "ready_to_launch",
            campaigns.c.version == campaign.version,
            campaigns.c.resume_attempts == campaign.resume_attempts,
        ]

    def start_resume_attempt(self, campaign: StalledCampaign) -> bool:
        """Count one more resume attempt, unless the campaign changed since it was read."""
        with self.engine.begin() as connection:
            return bool(
                connection.execute(
                    campaigns.update()
                    .where(*self._unchanged(campaign))
                    # updated_at moves the campaign behind the other stalled ones.
                    .values(resume_attempts=campaigns.c.resume_attempts + 1, updated_at=utcnow())
                ).rowcount
            )

    def give_up(self, campaign: StalledCampaign, reason: str) -> bool:
        """Mark a stalled campaign `failed` with `reason`, unless it changed since it was read."""
        now = utcnow()
        with self.engine.begin() as connection:
            return bool(
                connection.execute(
                    campaigns.update()
                    .where(*self._unchanged(campaign))
                    .values(
                        status="failed",
                        last_error=reason,
                        last_error_at=now,
                        version=campaigns.c.version + 1,
                        updated_at=now,
                        lease_run_id=None,
                        lease_expires_at=None,
                    )
                ).rowcount
            )
