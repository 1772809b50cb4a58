"""One campaign database: its engine and the parts of the store, each for its own callers."""

import sqlalchemy as sa

from campaign_pipeline.store.audience import Audience
from campaign_pipeline.store.campaigns import Campaigns
from campaign_pipeline.store.claims import Claims
from campaign_pipeline.store.control import Control
from campaign_pipeline.store.engine import default_database_url, make_engine
from campaign_pipeline.store.marketing_sends import MarketingSends
from campaign_pipeline.store.organizations import Organizations
from campaign_pipeline.store.schema import create_schema
from campaign_pipeline.store.suppressions import Suppressions
from campaign_pipeline.store.sweeps import Sweeps


class CampaignDatabase:
    """The store's parts over one engine: campaigns, claims, audience, sweeps, control.

    `claims` serve a run's claim and lease, `audience` its pending stream and outcome writes,
    `sweeps` the sensors, `control` the operators, `campaigns` everyone who reads a row,
    `suppressions` the organizations' opt-outs, `organizations` their own settings,
    `marketing_sends` the frequency cap's memory and reservations.
    """

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.campaigns = Campaigns(engine)
        self.claims = Claims(engine)
        self.audience = Audience(engine)
        self.sweeps = Sweeps(engine)
        self.control = Control(engine)
        self.suppressions = Suppressions(engine)
        self.organizations = Organizations(engine)
        self.marketing_sends = MarketingSends(engine)

    @classmethod
    def connect(cls, url: str | None = None) -> "CampaignDatabase":
        """The database at `url`, else CAMPAIGN_DATABASE_URL's (see `default_database_url`)."""
        return cls(make_engine(url or default_database_url()))

    def create_schema(self) -> None:
        """Create or upgrade the tables (see `schema.create_schema`)."""
        create_schema(self.engine)

    def dispose(self) -> None:
        """Close the connection pool."""
        self.engine.dispose()
