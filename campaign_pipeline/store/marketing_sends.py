"""The frequency cap's memory and reservations: each number's recent marketing messages.

A send reserves a chunk's numbers before queueing them. On PostgreSQL the decision is one
UPDATE of the rows of the chunk's numbers, in their order (racing sends lock rows in the same
order): a row takes the campaign's entry only where fewer than N entries of other campaigns are
inside the window, re-checked on the row's latest version once its lock is held, so racing
campaigns, runs, shards and workers never queue a number past the cap. Numbers without a row
get one with the campaign's entry (the unique key decides between racing inserts); a number
another send inserted meanwhile is asked again. Entries are kept oldest first and trimmed to
the newest N, so the check is one comparison (the N-th newest entry is older than the window);
a row that still holds this campaign's own entry (a send that failed or crashed) is checked
without it. Entries of recipients that were not queued are released. On SQLite the same rules
run in Python (`store.sqlite_marketing_sends`) under SQLite's one write lock.

History: a send with a cap first makes sure the organization's marketing messages of the last
window are in the table (`count_history`): messages queued while no cap held were not recorded,
and a cap of more messages needs more than the newest entries kept.
"""

from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from campaign_pipeline.categories import NOT_MARKETING
from campaign_pipeline.clock import as_utc
from campaign_pipeline.frequency_caps import FrequencyCap
from campaign_pipeline.store import sqlite_marketing_sends as on_sqlite
from campaign_pipeline.store.engine import database_now
from campaign_pipeline.store.organizations import upsert_organization
from campaign_pipeline.store.schema import organizations

_TEXT_ARRAY = postgresql.ARRAY(sa.Text)

# The campaign's key in `campaign_keys`.
_KEY = "hashtextextended(CAST(:campaign_id AS text), 0)"
# The row's times and keys without the campaign's own entry (the long way only if it has one).
_TIMES = f"""(CASE WHEN {_KEY} = ANY(f.campaign_keys) THEN ARRAY(
        SELECT entry.sent_at
        FROM unnest(f.sent_at, f.campaign_keys) WITH ORDINALITY
            AS entry(sent_at, campaign_key, position)
        WHERE entry.campaign_key <> {_KEY} ORDER BY entry.position
    ) ELSE f.sent_at END)"""
_KEYS = f"(array_remove(f.campaign_keys, {_KEY}))"
# Fewer than N of the other entries are inside the window (they are oldest first).
_ROOM = f"""(cardinality({_TIMES}) < :messages
    OR {_TIMES}[cardinality({_TIMES}) - :messages + 1]
        <= now() - make_interval(secs => :seconds))"""
_NUMBERS = "f.organization_id = :organization_id AND f.phone_number = ANY(:numbers)"
_NUMBERS_PARAMETER = sa.bindparam("numbers", type_=_TEXT_ARRAY)

# Only the numbers not granted come back: refused, or without a row yet.
_RESERVE = sa.text(
    f"""
    WITH granted AS (
        UPDATE marketing_sends AS f SET
            sent_at = {_TIMES}[greatest(cardinality({_TIMES}) - :messages + 2, 1):]
                || clock_timestamp(),
            campaign_keys = {_KEYS}[greatest(cardinality({_KEYS}) - :messages + 2, 1):]
                || {_KEY}
        WHERE {_NUMBERS} AND {_ROOM}
        RETURNING f.phone_number
    )
    SELECT number FROM unnest(:numbers) AS number
    EXCEPT SELECT phone_number FROM granted
    """
).bindparams(_NUMBERS_PARAMETER)
_ADD = sa.text(
    f"""
    INSERT INTO marketing_sends (organization_id, phone_number, sent_at, campaign_keys)
    SELECT CAST(:organization_id AS varchar(36)), number, ARRAY[clock_timestamp()], ARRAY[{_KEY}]
    FROM unnest(:numbers) AS number
    ORDER BY number
    ON CONFLICT (organization_id, phone_number) DO NOTHING
    RETURNING phone_number
    """
).bindparams(_NUMBERS_PARAMETER)
_OVER_CAP = sa.text(
    f"SELECT f.phone_number FROM marketing_sends AS f WHERE {_NUMBERS} AND NOT {_ROOM}"
).bindparams(_NUMBERS_PARAMETER)
_RELEASE = sa.text(
    f"""
    UPDATE marketing_sends AS f SET sent_at = {_TIMES}, campaign_keys = {_KEYS}
    WHERE {_NUMBERS} AND {_KEY} = ANY(f.campaign_keys)
    """
).bindparams(_NUMBERS_PARAMETER)
# The organization's marketing messages queued since `since`, merged in oldest first: a
# campaign already in a row is left as it is.
_COUNT_HISTORY = sa.text(
    """
    INSERT INTO marketing_sends AS f (organization_id, phone_number, sent_at, campaign_keys)
    SELECT CAST(:organization_id AS varchar(36)), audience.phone_number,
           array_agg(audience.updated_at ORDER BY audience.updated_at, campaign.id),
           array_agg(hashtextextended(campaign.id, 0) ORDER BY audience.updated_at, campaign.id)
    FROM campaign_audience AS audience
    JOIN campaigns AS campaign ON campaign.id = audience.campaign_id
    WHERE campaign.organization_id = :organization_id
      AND (campaign.category IS NULL OR campaign.category NOT IN :not_marketing)
      AND audience.status = 'ready_to_send' AND audience.updated_at > :since
      AND audience.phone_number IS NOT NULL
    GROUP BY audience.phone_number
    ORDER BY audience.phone_number
    ON CONFLICT (organization_id, phone_number) DO UPDATE SET (sent_at, campaign_keys) = (
        SELECT array_agg(entry.sent_at ORDER BY entry.sent_at, entry.campaign_key),
               array_agg(entry.campaign_key ORDER BY entry.sent_at, entry.campaign_key)
        FROM (
            SELECT * FROM unnest(f.sent_at, f.campaign_keys)
            UNION ALL
            SELECT * FROM unnest(excluded.sent_at, excluded.campaign_keys) AS new(t, k)
            WHERE new.k <> ALL(f.campaign_keys)
        ) AS entry(sent_at, campaign_key)
    )
    """
).bindparams(sa.bindparam("not_marketing", expanding=True))


class MarketingSends:
    """The marketing_sends table, and how far back it counts (`organizations`)."""

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
        if self.engine.dialect.name != "postgresql":
            with self.engine.begin() as connection:
                return on_sqlite.reserve(connection, organization_id, campaign_id, cap, numbers)
        parameters = _parameters(organization_id, campaign_id, cap)
        # Each statement is its own transaction: none waits for a lock while holding others.
        with self.engine.begin() as connection:
            rest = sorted(connection.execute(_RESERVE, parameters | {"numbers": numbers}).scalars())
        if not rest:
            return set(numbers)
        with self.engine.begin() as connection:
            added = set(connection.execute(_ADD, parameters | {"numbers": rest}).scalars())
        # Refused, or given a row by another send meanwhile: asked again, the row there now.
        again = [number for number in rest if number not in added]
        if again:
            with self.engine.begin() as connection:
                refused = set(
                    connection.execute(_RESERVE, parameters | {"numbers": again}).scalars()
                )
        else:
            refused = set()
        return set(numbers) - refused

    def release(self, organization_id: str, campaign_id: str, phone_numbers: Iterable[str]) -> None:
        """Give back the campaign's reservations of numbers it did not queue."""
        numbers = sorted(set(phone_numbers))
        if not numbers:
            return
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                parameters = _parameters(organization_id, campaign_id)
                connection.execute(_RELEASE, parameters | {"numbers": numbers})
            else:
                on_sqlite.release(connection, organization_id, campaign_id, numbers)

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
            if connection.dialect.name != "postgresql":
                return on_sqlite.over_cap(connection, organization_id, campaign_id, cap, numbers)
            parameters = _parameters(organization_id, campaign_id, cap) | {"numbers": numbers}
            return set(connection.execute(_OVER_CAP, parameters).scalars())

    def count_history(self, organization_id: str, cap: FrequencyCap) -> None:
        """Make sure the organization's marketing messages the cap looks at are counted.

        Messages queued while no cap held were not recorded, and rows keep only the newest N
        entries: they are read from the audience once for a longer window or a larger N, and
        `organizations` remembers how far back, and how many, the table holds.
        """
        with self.engine.begin() as connection:
            now = database_now(connection)
            since = now - timedelta(seconds=cap.seconds)
            counted = connection.execute(
                sa.select(
                    organizations.c.marketing_counted_since,
                    organizations.c.marketing_counted_messages,
                ).where(organizations.c.organization_id == organization_id)
            ).one_or_none()
            if (
                counted is not None
                and counted.marketing_counted_since is not None
                and as_utc(counted.marketing_counted_since) <= since
                and (counted.marketing_counted_messages or 0) >= cap.messages
            ):
                return
            if connection.dialect.name == "postgresql":
                connection.execute(
                    _COUNT_HISTORY,
                    {
                        "organization_id": organization_id,
                        "since": since,
                        "not_marketing": NOT_MARKETING,
                    },
                )
            else:
                on_sqlite.count_history(connection, organization_id, since)
            upsert_organization(
                connection,
                organization_id,
                marketing_counted_since=since,
                marketing_counted_messages=cap.messages,
            )

    def forget_history(self, organization_id: str) -> None:
        """A marketing send without a cap is not recorded: the table is no longer complete."""
        with self.engine.begin() as connection:
            connection.execute(
                organizations.update()
                .where(
                    organizations.c.organization_id == organization_id,
                    organizations.c.marketing_counted_since.is_not(None),
                )
                .values(marketing_counted_since=None, marketing_counted_messages=None)
            )


def _parameters(
    organization_id: str, campaign_id: str, cap: FrequencyCap | None = None
) -> dict[str, Any]:
    """The bind parameters of the PostgreSQL statements, but the numbers."""
    parameters: dict[str, Any] = {"organization_id": organization_id, "campaign_id": campaign_id}
    if cap is not None:
        parameters |= {"seconds": cap.seconds, "messages": cap.messages}
    return parameters
