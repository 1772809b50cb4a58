"""Organizations' own settings: today the frequency cap (NULL: `CAMPAIGN_FREQUENCY_CAP`)."""

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from campaign_pipeline.store.schema import organizations


class Organizations:
    """The organizations table."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def frequency_cap(self, organization_id: str) -> str | None:
        """The organization's own cap (`N/DURATION` or `off`); None: the default holds."""
        with self.engine.connect() as connection:
            return connection.execute(
                sa.select(organizations.c.frequency_cap).where(
                    organizations.c.organization_id == organization_id
                )
            ).scalar_one_or_none()

    def set_frequency_cap(self, organization_id: str, cap: str | None) -> None:
        """Give the organization its own cap (checked by the caller), or None for the default."""
        with self.engine.begin() as connection:
            insert = (
                postgresql.insert(organizations)
                if connection.dialect.name == "postgresql"
                else sqlite.insert(organizations)
            )
            connection.execute(
                insert.values(
                    organization_id=organization_id, frequency_cap=cap
                ).on_conflict_do_update(
                    index_elements=["organization_id"], set_={"frequency_cap": cap}
                )
            )
