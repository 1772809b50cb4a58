"""Organizations' own settings: today the frequency cap (NULL: `CAMPAIGN_FREQUENCY_CAP`)."""

from typing import Any

import sqlalchemy as sa

from campaign_pipeline.store.engine import insert_for
from campaign_pipeline.store.schema import organizations


def upsert_organization(connection: sa.Connection, organization_id: str, **values: Any) -> None:
    """Set the organization's columns in `values`, adding its row if it has none."""
    connection.execute(
        insert_for(connection, organizations)
        .values(organization_id=organization_id, **values)
        .on_conflict_do_update(index_elements=["organization_id"], set_=values)
    )


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
            upsert_organization(connection, organization_id, frequency_cap=cap)
