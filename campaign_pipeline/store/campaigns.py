"""Campaign rows themselves: read one; add campaigns and their audiences (seeding, the demo)."""

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa

from campaign_pipeline.store.engine import ROWS_PER_STATEMENT
from campaign_pipeline.store.schema import campaign_audience, campaigns


class Campaigns:
    """The campaigns table, row by row."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def get(self, campaign_id: str) -> dict[str, Any] | None:
        """The campaign's row, or None."""
        with self.engine.connect() as connection:
            row = (
                connection.execute(sa.select(campaigns).where(campaigns.c.id == campaign_id))
                .mappings()
                .first()
            )
        return dict(row) if row else None

    def add(self, **fields: Any) -> str:
        """Insert a campaign (for seeding and tests); returns its id."""
        fields.setdefault("id", str(uuid.uuid4()))
        with self.engine.begin() as connection:
            connection.execute(campaigns.insert().values(**fields))
        return fields["id"]

    def add_recipients(self, campaign_id: str, recipients: Iterable[Mapping[str, Any]]) -> int:
        """Insert recipients of a campaign in bulk (for seeding and tests); returns how many."""
        rows = [
            {"id": str(uuid.uuid4()), "name": None, "attributes": None, **recipient}
            | {"campaign_id": campaign_id}
            for recipient in recipients
        ]
        with self.engine.begin() as connection:
            for start in range(0, len(rows), ROWS_PER_STATEMENT):
                connection.execute(
                    campaign_audience.insert(), rows[start : start + ROWS_PER_STATEMENT]
                )
        return len(rows)
