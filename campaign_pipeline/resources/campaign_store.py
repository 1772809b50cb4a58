"""The campaign store as a Dagster resource: where the database is, and the store made once a run.

Configuration and a factory only; everything the store does is in `campaign_pipeline.store`.
"""

import dagster as dg
import sqlalchemy as sa
from pydantic import Field, PrivateAttr

from campaign_pipeline.store.audience import Audience
from campaign_pipeline.store.campaigns import Campaigns
from campaign_pipeline.store.claims import Claims
from campaign_pipeline.store.control import Control
from campaign_pipeline.store.database import CampaignDatabase
from campaign_pipeline.store.marketing_sends import MarketingSends
from campaign_pipeline.store.organizations import Organizations
from campaign_pipeline.store.suppressions import Suppressions
from campaign_pipeline.store.sweeps import Sweeps


class CampaignStore(dg.ConfigurableResource):
    """Campaigns and their audiences in SQLite or PostgreSQL (SQLAlchemy Core, psycopg 3)."""

    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the campaign database. Unset: CAMPAIGN_DATABASE_URL, "
        "else a SQLite file campaigns.db in $DAGSTER_HOME or the working directory.",
    )

    _database: CampaignDatabase | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Open the connection pool once per run."""
        self._database = CampaignDatabase.connect(self.database_url)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        """Close the connection pool."""
        if self._database is not None:
            self._database.dispose()

    @property
    def database(self) -> CampaignDatabase:
        """The store (opened on first use outside a Dagster run)."""
        if self._database is None:
            self._database = CampaignDatabase.connect(self.database_url)
        return self._database

    @property
    def engine(self) -> sa.Engine:
        """The database's engine."""
        return self.database.engine

    @property
    def campaigns(self) -> Campaigns:
        """Campaign rows: read, add."""
        return self.database.campaigns

    @property
    def claims(self) -> Claims:
        """A run's claim and lease."""
        return self.database.claims

    @property
    def audience(self) -> Audience:
        """The pending stream, outcome writes and counts."""
        return self.database.audience

    @property
    def sweeps(self) -> Sweeps:
        """The sensors' queries."""
        return self.database.sweeps

    @property
    def control(self) -> Control:
        """Operators' commands."""
        return self.database.control

    @property
    def suppressions(self) -> Suppressions:
        """Organizations' opt-outs."""
        return self.database.suppressions

    @property
    def organizations(self) -> Organizations:
        """Organizations' own settings (the frequency cap)."""
        return self.database.organizations

    @property
    def marketing_sends(self) -> MarketingSends:
        """The frequency cap's memory and reservations."""
        return self.database.marketing_sends

    def create_schema(self) -> None:
        """Create or upgrade the tables."""
        self.database.create_schema()
