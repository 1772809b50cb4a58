"""The frequency cap's memory and reservations: each number's recent marketing messages.

A send reserves a chunk's numbers before queueing them. On PostgreSQL that is one statement: an
upsert of every number (in order, so racing sends lock rows in the same order) that prunes each
row to the other campaigns' entries inside the window and appends the campaign's own only where
fewer than N are left, and returns the numbers it refused. The row lock, and the entries read
from the row's latest version, make racing campaigns, runs, shards and workers queue no number
past the cap. A campaign holds at most one entry per number, so a resumed send re-reserves
what a crashed one held. Entries of recipients that were not queued are released. On SQLite
the same is done in Python inside a transaction that writes first, which takes SQLite's one
write lock.

History: a send with a cap first makes sure the organization's marketing messages of the last
window are in the table (`count_history`), since messages queued while no cap held were not
recorded; `marketing_counted_since` says how far back the table is complete.
"""

import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from campaign_pipeline.categories import CATEGORIES, DEFAULT_CATEGORY
from campaign_pipeline.frequency_caps import FrequencyCap
from campaign_pipeline.store.engine import ROWS_PER_STATEMENT
from campaign_pipeline.store.schema import (
    campaign_audience,
    campaigns,
    marketing_sends,
    organizations,
)

# SQLite binds at most 32,766 parameters to a statement: numbers go in slices.
SQLITE_NUMBERS_PER_STATEMENT = 10_000
_TEXT_ARRAY = postgresql.ARRAY(sa.Text)
_NOT_MARKETING = tuple(category for category in CATEGORIES if category != DEFAULT_CATEGORY)

# Entries of other campaigns still inside the window, of the row `f`.
_OTHERS_IN_WINDOW = """
    FROM unnest(f.sent_at, f.campaign_ids) AS entry(sent_at, campaign_id)
    WHERE entry.sent_at > now() - make_interval(secs => :seconds)
      AND entry.campaign_id <> :campaign_id
"""
# Each number's row is locked and its entries read once: those of other campaigns inside the
# window are kept, and the campaign's own is appended when fewer than N of them are left. Only
# the numbers refused come back.
_RESERVE = sa.text(
    f"""
    WITH reserved AS (
        INSERT INTO marketing_sends AS f (organization_id, phone_number, sent_at, campaign_ids)
        SELECT :organization_id, number, ARRAY[now()], ARRAY[CAST(:campaign_id AS varchar(36))]
        FROM unnest(:numbers) AS number
        ORDER BY number
        ON CONFLICT (organization_id, phone_number) DO UPDATE SET (sent_at, campaign_ids) = (
            SELECT
                CASE WHEN count(*) < :messages
                    THEN coalesce(array_agg(entry.sent_at), '{{}}') || now()
                    ELSE coalesce(array_agg(entry.sent_at), '{{}}')
                END,
                CASE WHEN count(*) < :messages
                    THEN coalesce(array_agg(entry.campaign_id), '{{}}')
                        || CAST(:campaign_id AS varchar(36))
                    ELSE coalesce(array_agg(entry.campaign_id), '{{}}')
                END
            {_OTHERS_IN_WINDOW}
        )
        RETURNING phone_number, campaign_ids[cardinality(campaign_ids)] = :campaign_id AS granted
    )
    SELECT phone_number FROM reserved WHERE NOT granted
    """
).bindparams(sa.bindparam("numbers", type_=_TEXT_ARRAY))
_OVER_CAP = sa.text(
    f"""
    SELECT f.phone_number FROM marketing_sends AS f
    WHERE f.organization_id = :organization_id AND f.phone_number = ANY(:numbers)
      AND (SELECT count(*) {_OTHERS_IN_WINDOW}) >= :messages
    """
).bindparams(sa.bindparam("numbers", type_=_TEXT_ARRAY))
_RELEASE = sa.text(
    """
    UPDATE marketing_sends AS f SET
        sent_at = ARRAY(
            SELECT entry.sent_at
            FROM unnest(f.sent_at, f.campaign_ids) AS entry(sent_at, campaign_id)
            WHERE entry.campaign_id <> :campaign_id
        ),
        campaign_ids = array_remove(f.campaign_ids, CAST(:campaign_id AS varchar(36)))
    WHERE f.organization_id = :organization_id AND f.phone_number = ANY(:numbers)
      AND CAST(:campaign_id AS varchar(36)) = ANY(f.campaign_ids)
    """
).bindparams(sa.bindparam("numbers", type_=_TEXT_ARRAY))
# The organization's marketing messages queued since `since`, merged in: a campaign already in
# a row is left as it is.
_COUNT_HISTORY = sa.text(
    """
    INSERT INTO marketing_sends AS f (organization_id, phone_number, sent_at, campaign_ids)
    SELECT CAST(:organization_id AS varchar(36)), audience.phone_number,
           array_agg(audience.updated_at ORDER BY audience.updated_at),
           array_agg(audience.campaign_id ORDER BY audience.updated_at)
    FROM campaign_audience AS audience
    JOIN campaigns AS campaign ON campaign.id = audience.campaign_id
    WHERE campaign.organization_id = :organization_id
      AND (campaign.category IS NULL OR campaign.category NOT IN :not_marketing)
      AND audience.status = 'ready_to_send' AND audience.updated_at > :since
      AND audience.phone_number IS NOT NULL
    GROUP BY audience.phone_number
    ORDER BY audience.phone_number
    ON CONFLICT (organization_id, phone_number) DO UPDATE SET
        sent_at = f.sent_at || ARRAY(
            SELECT entry.sent_at
            FROM unnest(excluded.sent_at, excluded.campaign_ids) AS entry(sent_at, campaign_id)
            WHERE entry.campaign_id <> ALL(f.campaign_ids)
        ),
        campaign_ids = f.campaign_ids || ARRAY(
            SELECT entry.campaign_id FROM unnest(excluded.campaign_ids) AS entry(campaign_id)
            WHERE entry.campaign_id <> ALL(f.campaign_ids)
        )
    """
).bindparams(sa.bindparam("not_marketing", expanding=True))


class MarketingSends:
    """The marketing_sends table, and the organizations' `marketing_counted_since`."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def reserve(
        self,
        organization_id: str,
        campaign_id: str,
        cap: FrequencyCap,
        phone_numbers: Iterable[str],
    ) -> set[str]:
        """Reserve a message to each number the cap allows one more; returns those numbers."""
        numbers = sorted(set(phone_numbers))
        if not numbers:
            return set()
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                parameters = _parameters(organization_id, campaign_id, numbers, cap)
                return set(numbers) - set(connection.execute(_RESERVE, parameters).scalars())
            return _sqlite_reserve(connection, organization_id, campaign_id, cap, numbers)

    def release(self, organization_id: str, campaign_id: str, phone_numbers: Iterable[str]) -> None:
        """Give back the campaign's reservations of numbers it did not queue."""
        numbers = sorted(set(phone_numbers))
        if not numbers:
            return
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(_RELEASE, _parameters(organization_id, campaign_id, numbers))
                return
            rows = _sqlite_rows(connection, organization_id, numbers)
            updates = [
                {
                    "number": number,
                    "times": [t for t, c in zip(times, ids, strict=True) if c != campaign_id],
                    "ids": [c for c in ids if c != campaign_id],
                }
                for number, times, ids in rows
                if campaign_id in ids
            ]
            _sqlite_update(connection, organization_id, updates)

    def over_cap(
        self,
        organization_id: str,
        campaign_id: str,
        cap: FrequencyCap,
        phone_numbers: Sequence[str],
    ) -> set[str]:
        """Of the numbers, those the cap allows no more messages now (nothing is reserved)."""
        numbers = sorted(set(phone_numbers))
        if not numbers:
            return set()
        with self.engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                parameters = _parameters(organization_id, campaign_id, numbers, cap)
                return set(connection.execute(_OVER_CAP, parameters).scalars())
            cutoff = time.time() - cap.seconds
            return {
                number
                for number, times, ids in _sqlite_rows(connection, organization_id, numbers)
                if _others_in_window(times, ids, campaign_id, cutoff) >= cap.messages
            }

    def count_history(self, organization_id: str, seconds: int) -> None:
        """Make sure the organization's marketing messages of the last `seconds` are counted.

        Messages queued while no cap held were not recorded; they are read from the audience
        once, and `marketing_counted_since` remembers how far back the table is complete.
        """
        with self.engine.begin() as connection:
            now = _database_now(connection)
            since = now - timedelta(seconds=seconds)
            counted = connection.execute(
                sa.select(organizations.c.marketing_counted_since).where(
                    organizations.c.organization_id == organization_id
                )
            ).scalar_one_or_none()
            if counted is not None and _utc(counted) <= since:
                return
            if connection.dialect.name == "postgresql":
                connection.execute(
                    _COUNT_HISTORY,
                    {
                        "organization_id": organization_id,
                        "since": since,
                        "not_marketing": _NOT_MARKETING,
                    },
                )
            else:
                _sqlite_count_history(connection, organization_id, since)
            _upsert_organization(connection, organization_id, marketing_counted_since=since)

    def forget_history(self, organization_id: str) -> None:
        """A marketing send without a cap is not recorded: the table is no longer complete."""
        with self.engine.begin() as connection:
            connection.execute(
                organizations.update()
                .where(
                    organizations.c.organization_id == organization_id,
                    organizations.c.marketing_counted_since.is_not(None),
                )
                .values(marketing_counted_since=None)
            )


def _parameters(
    organization_id: str,
    campaign_id: str,
    numbers: list[str],
    cap: FrequencyCap | None = None,
) -> dict[str, Any]:
    """The bind parameters of the PostgreSQL statements."""
    parameters: dict[str, Any] = {
        "organization_id": organization_id,
        "campaign_id": campaign_id,
        "numbers": numbers,
    }
    if cap is not None:
        parameters |= {"seconds": cap.seconds, "messages": cap.messages}
    return parameters


def _upsert_organization(connection: sa.Connection, organization_id: str, **values: Any) -> None:
    insert = (
        postgresql.insert(organizations)
        if connection.dialect.name == "postgresql"
        else sqlite.insert(organizations)
    )
    connection.execute(
        insert.values(organization_id=organization_id, **values).on_conflict_do_update(
            index_elements=["organization_id"], set_=values
        )
    )


def _database_now(connection: sa.Connection) -> datetime:
    if connection.dialect.name == "postgresql":
        return _utc(
            connection.execute(
                sa.select(sa.func.now(type_=sa.DateTime(timezone=True)))
            ).scalar_one()
        )
    return datetime.now(UTC)


def _utc(moment: datetime) -> datetime:
    """A stored moment in UTC (SQLite hands it back without a zone)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _others_in_window(
    times: Sequence[float], ids: Sequence[str], campaign_id: str, cutoff: float
) -> int:
    return sum(1 for t, c in zip(times, ids, strict=True) if t > cutoff and c != campaign_id)


def _slices(numbers: Sequence[str]) -> list[Sequence[str]]:
    return [
        numbers[start : start + SQLITE_NUMBERS_PER_STATEMENT]
        for start in range(0, len(numbers), SQLITE_NUMBERS_PER_STATEMENT)
    ]


def _sqlite_rows(
    connection: sa.Connection, organization_id: str, numbers: Sequence[str]
) -> list[tuple[str, list[float], list[str]]]:
    """SQLite: (number, times as epoch seconds, campaign ids) of the numbers that have a row."""
    rows: list[tuple[str, list[float], list[str]]] = []
    for part in _slices(numbers):
        rows += [
            (row.phone_number, row.sent_at, row.campaign_ids)
            for row in connection.execute(
                sa.select(
                    marketing_sends.c.phone_number,
                    marketing_sends.c.sent_at,
                    marketing_sends.c.campaign_ids,
                ).where(
                    marketing_sends.c.organization_id == organization_id,
                    marketing_sends.c.phone_number.in_(part),
                )
            )
        ]
    return rows


def _sqlite_update(
    connection: sa.Connection, organization_id: str, updates: list[dict[str, Any]]
) -> None:
    statement = (
        marketing_sends.update()
        .where(
            marketing_sends.c.organization_id == organization_id,
            marketing_sends.c.phone_number == sa.bindparam("number"),
        )
        .values(sent_at=sa.bindparam("times"), campaign_ids=sa.bindparam("ids"))
    )
    for start in range(0, len(updates), ROWS_PER_STATEMENT):
        connection.execute(statement, updates[start : start + ROWS_PER_STATEMENT])


def _sqlite_insert_missing(
    connection: sa.Connection, organization_id: str, numbers: Sequence[str]
) -> None:
    """Rows with no entries for numbers without one; being a write, it takes the write lock."""
    statement = (
        sqlite.insert(marketing_sends)
        .values(
            organization_id=organization_id,
            phone_number=sa.bindparam("number"),
            sent_at=sa.bindparam("times"),
            campaign_ids=sa.bindparam("ids"),
        )
        .on_conflict_do_nothing(index_elements=["organization_id", "phone_number"])
    )
    rows = [{"number": number, "times": [], "ids": []} for number in numbers]
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        connection.execute(statement, rows[start : start + ROWS_PER_STATEMENT])


def _sqlite_reserve(
    connection: sa.Connection,
    organization_id: str,
    campaign_id: str,
    cap: FrequencyCap,
    numbers: Sequence[str],
) -> set[str]:
    now = time.time()
    cutoff = now - cap.seconds
    _sqlite_insert_missing(connection, organization_id, numbers)
    granted: set[str] = set()
    updates = []
    for number, times, ids in _sqlite_rows(connection, organization_id, numbers):
        kept = [(t, c) for t, c in zip(times, ids, strict=True) if t > cutoff and c != campaign_id]
        if len(kept) < cap.messages:
            granted.add(number)
            kept.append((now, campaign_id))
            updates.append(
                {"number": number, "times": [t for t, _ in kept], "ids": [c for _, c in kept]}
            )
    _sqlite_update(connection, organization_id, updates)
    return granted


def _sqlite_count_history(connection: sa.Connection, organization_id: str, since: datetime) -> None:
    audience = campaign_audience.c
    history: dict[str, list[tuple[float, str]]] = {}
    query = (
        sa.select(audience.phone_number, audience.updated_at, audience.campaign_id)
        .join(campaigns, campaigns.c.id == audience.campaign_id)
        .where(
            campaigns.c.organization_id == organization_id,
            sa.or_(campaigns.c.category.is_(None), campaigns.c.category.not_in(_NOT_MARKETING)),
            audience.status == "ready_to_send",
            audience.updated_at > since.replace(tzinfo=None),
            audience.phone_number.is_not(None),
        )
        .order_by(audience.updated_at)
    )
    for number, updated_at, campaign_id in connection.execute(query):
        history.setdefault(number, []).append((_utc(updated_at).timestamp(), campaign_id))
    numbers = sorted(history)
    _sqlite_insert_missing(connection, organization_id, numbers)
    updates = []
    for number, times, ids in _sqlite_rows(connection, organization_id, numbers):
        new = [(t, c) for t, c in history[number] if c not in ids]
        if new:
            updates.append(
                {
                    "number": number,
                    "times": times + [t for t, _ in new],
                    "ids": ids + [c for _, c in new],
                }
            )
    _sqlite_update(connection, organization_id, updates)
