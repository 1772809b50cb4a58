"""Who must not be messaged: an organization's suppression list (opt-outs), and its lookups.

One row per organization and number. Scope `marketing` holds for marketing campaigns, `all` for
every campaign. Adding a number already there counts it as present and never narrows it: an
`all` added over a `marketing` one widens it. A send asks for a chunk's numbers at once (an
index probe each on PostgreSQL), and for what was added since it last asked, so a suppression
committed mid-send reaches the batches handed out after the next look.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import polars as pl
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from campaign_pipeline.clock import as_utc
from campaign_pipeline.store.engine import ROWS_PER_STATEMENT, database_now, insert_for
from campaign_pipeline.store.schema import campaign_audience, suppressions

SCOPES = ("marketing", "all")
# How long before its look a send still asks for suppressions: `created_at` is when the adding
# transaction began, so one that took longer than this to commit may be missed mid-send (the
# next chunk's check, and the next run, see it).
COMMIT_OVERLAP = timedelta(seconds=60)
DEFAULT_SCOPE = "marketing"
# SQLite binds at most 32,766 parameters to a statement: a chunk's numbers go in slices.
SQLITE_NUMBERS_PER_STATEMENT = 10_000
# `matching`'s frame: a suppressed number, its scope, why and since when.
MATCH_SCHEMA = pl.Schema(
    [
        ("phone_number", pl.String()),
        ("scope", pl.String()),
        ("reason", pl.String()),
        ("created_at", pl.Datetime(time_zone="UTC")),
    ]
)


@dataclass(frozen=True)
class Suppression:
    """One suppressed number of an organization."""

    phone_number: str
    scope: str
    reason: str | None
    source: str | None
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        """The `suppress list --json` object (the API's too)."""
        return {
            "phone_number": self.phone_number,
            "scope": self.scope,
            "reason": self.reason,
            "source": self.source,
            "created_at": self.created_at.isoformat(timespec="seconds"),
        }


@dataclass(frozen=True)
class Added:
    """What `add` did: numbers new to the list, and numbers already on it."""

    added: int
    present: int


def _scopes_for(category: str) -> tuple[str, ...]:
    """The scopes that hold for a campaign of `category`."""
    return SCOPES if category == "marketing" else ("all",)


class Suppressions:
    """The suppressions table."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def add(
        self,
        organization_id: str,
        phone_numbers: Sequence[str],
        scope: str = DEFAULT_SCOPE,
        reason: str | None = None,
        source: str | None = None,
    ) -> Added:
        """Suppress valid E.164 `phone_numbers` (checked by the caller) in one transaction."""
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
        numbers = list(dict.fromkeys(phone_numbers))
        with self.engine.begin() as connection:
            present: set[str] = set(self._present(connection, organization_id, numbers))
            rows = [
                {
                    "organization_id": organization_id,
                    "phone_number": number,
                    "scope": scope,
                    "reason": reason,
                    "source": source,
                }
                for number in numbers
                if number not in present
            ]
            insert = insert_for(connection, suppressions)
            # Another writer may have added one meanwhile: it is there either way.
            statement = insert.on_conflict_do_nothing(
                index_elements=["organization_id", "phone_number"]
            )
            for start in range(0, len(rows), ROWS_PER_STATEMENT):
                connection.execute(statement, rows[start : start + ROWS_PER_STATEMENT])
            if scope == "all" and present:
                for part in _slices(sorted(present)):
                    connection.execute(
                        suppressions.update()
                        .where(
                            suppressions.c.organization_id == organization_id,
                            suppressions.c.phone_number.in_(part),
                        )
                        .values(scope="all")
                    )
        return Added(added=len(rows), present=len(present))

    def remove(self, organization_id: str, phone_numbers: Sequence[str]) -> int:
        """Take numbers off the list; returns how many were on it."""
        removed = 0
        with self.engine.begin() as connection:
            for part in _slices(list(dict.fromkeys(phone_numbers))):
                removed += connection.execute(
                    suppressions.delete().where(
                        suppressions.c.organization_id == organization_id,
                        suppressions.c.phone_number.in_(part),
                    )
                ).rowcount
        return removed

    def listed(self, organization_id: str) -> list[Suppression]:
        """The organization's suppressions, by number."""
        query = (
            sa.select(
                suppressions.c.phone_number,
                suppressions.c.scope,
                suppressions.c.reason,
                suppressions.c.source,
                suppressions.c.created_at,
            )
            .where(suppressions.c.organization_id == organization_id)
            .order_by(suppressions.c.phone_number)
        )
        with self.engine.connect() as connection:
            return [
                Suppression(
                    row.phone_number, row.scope, row.reason, row.source, as_utc(row.created_at)
                )
                for row in connection.execute(query)
            ]

    def matching(
        self, organization_id: str, phone_numbers: Sequence[str], category: str
    ) -> pl.DataFrame:
        """Of `phone_numbers`, those suppressed for a campaign of `category` (`MATCH_SCHEMA`)."""
        rows: list[Any] = []
        with self.engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                numbers = sa.bindparam("numbers", list(phone_numbers), type_=_TEXT_ARRAY)
                rows += connection.execute(
                    self._match_query(organization_id, category).where(
                        suppressions.c.phone_number == sa.any_(numbers)
                    )
                ).all()
            else:
                for part in _slices(list(phone_numbers)):
                    rows += connection.execute(
                        self._match_query(organization_id, category).where(
                            suppressions.c.phone_number.in_(part)
                        )
                    ).all()
        return _match_frame(rows)

    def added_for_pending(
        self,
        organization_id: str,
        campaign_id: str,
        category: str,
        since: datetime | None = None,
    ) -> tuple[pl.DataFrame, datetime]:
        """Suppressions created at `since` or later of numbers still pending in the campaign.

        Times are the database's (`created_at` is its clock too): with `since` None, the last
        `COMMIT_OVERLAP`. Returns the matches (`MATCH_SCHEMA`) and the database's time now.
        """
        audience = campaign_audience.c
        with self.engine.connect() as connection:
            now = database_now(connection)
            pending = (
                sa.exists()
                .where(
                    audience.campaign_id == campaign_id,
                    audience.phone_number == suppressions.c.phone_number,
                    audience.status == "pending",
                )
                .correlate(suppressions)
            )
            rows = connection.execute(
                self._match_query(organization_id, category).where(
                    suppressions.c.created_at >= (since or now - COMMIT_OVERLAP), pending
                )
            ).all()
        return _match_frame(rows), now

    @staticmethod
    def _match_query(organization_id: str, category: str) -> sa.Select:
        return sa.select(
            suppressions.c.phone_number,
            suppressions.c.scope,
            suppressions.c.reason,
            suppressions.c.created_at,
        ).where(
            suppressions.c.organization_id == organization_id,
            suppressions.c.scope.in_(_scopes_for(category)),
        )

    @staticmethod
    def _present(
        connection: sa.Connection, organization_id: str, numbers: Sequence[str]
    ) -> list[str]:
        present: list[str] = []
        for part in _slices(list(numbers)):
            present += connection.execute(
                sa.select(suppressions.c.phone_number).where(
                    suppressions.c.organization_id == organization_id,
                    suppressions.c.phone_number.in_(part),
                )
            ).scalars()
        return present


_TEXT_ARRAY = postgresql.ARRAY(sa.Text)


def _slices(numbers: list[str]) -> list[list[str]]:
    return [
        numbers[start : start + SQLITE_NUMBERS_PER_STATEMENT]
        for start in range(0, len(numbers), SQLITE_NUMBERS_PER_STATEMENT)
    ]


def _match_frame(rows: Sequence[Any]) -> pl.DataFrame:
    return pl.DataFrame(
        [(row.phone_number, row.scope, row.reason, as_utc(row.created_at)) for row in rows],
        schema=MATCH_SCHEMA,
        orient="row",
    )
