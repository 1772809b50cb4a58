"""The frequency cap's reservations on SQLite: `store.marketing_sends`' rules, in Python.

Each function runs in the caller's transaction, which writes first (rows for numbers without
one): that takes SQLite's one write lock, so no other send decides for these numbers until the
transaction commits. Times are epoch seconds; a campaign is its id. Entries are pruned to the
window, not trimmed to N: SQLite serves one machine's sends, and its rows stay small.
"""

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from campaign_pipeline.categories import NOT_MARKETING
from campaign_pipeline.clock import as_utc
from campaign_pipeline.frequency_caps import FrequencyCap
from campaign_pipeline.store.engine import ROWS_PER_STATEMENT, insert_for
from campaign_pipeline.store.schema import campaign_audience, campaigns, marketing_sends

# SQLite binds at most 32,766 parameters to a statement: numbers go in slices.
NUMBERS_PER_STATEMENT = 10_000
Entries = list[tuple[float, str]]


def reserve(
    connection: sa.Connection,
    organization_id: str,
    campaign_id: str,
    cap: FrequencyCap,
    numbers: Sequence[str],
) -> set[str]:
    """The numbers granted a message: fewer than N other campaigns' entries in the window."""
    now = time.time()
    cutoff = now - cap.seconds
    _add_missing(connection, organization_id, numbers)
    granted: set[str] = set()
    updates = []
    for number, entries in _rows(connection, organization_id, numbers):
        kept = [(t, c) for t, c in entries if t > cutoff and c != campaign_id]
        if len(kept) < cap.messages:
            granted.add(number)
            updates.append(_update(number, [*kept, (now, campaign_id)]))
    _write(connection, organization_id, updates)
    return granted


def release(
    connection: sa.Connection, organization_id: str, campaign_id: str, numbers: Sequence[str]
) -> None:
    """Take the campaign's entries off the numbers' rows."""
    updates = [
        _update(number, [(t, c) for t, c in entries if c != campaign_id])
        for number, entries in _rows(connection, organization_id, numbers)
        if any(c == campaign_id for _, c in entries)
    ]
    _write(connection, organization_id, updates)


def over_cap(
    connection: sa.Connection,
    organization_id: str,
    campaign_id: str,
    cap: FrequencyCap,
    numbers: Sequence[str],
) -> set[str]:
    """The numbers with N other campaigns' entries in the window (nothing is written)."""
    cutoff = time.time() - cap.seconds
    return {
        number
        for number, entries in _rows(connection, organization_id, numbers)
        if sum(1 for t, c in entries if t > cutoff and c != campaign_id) >= cap.messages
    }


def count_history(connection: sa.Connection, organization_id: str, since: datetime) -> None:
    """Merge in the organization's marketing messages queued since `since` (by campaign)."""
    audience = campaign_audience.c
    history: dict[str, Entries] = {}
    query = (
        sa.select(audience.phone_number, audience.updated_at, audience.campaign_id)
        .join(campaigns, campaigns.c.id == audience.campaign_id)
        .where(
            campaigns.c.organization_id == organization_id,
            sa.or_(campaigns.c.category.is_(None), campaigns.c.category.not_in(NOT_MARKETING)),
            audience.status == "ready_to_send",
            audience.updated_at > as_utc(since).replace(tzinfo=None),
            audience.phone_number.is_not(None),
        )
    )
    for number, updated_at, campaign_id in connection.execute(query):
        history.setdefault(number, []).append((as_utc(updated_at).timestamp(), campaign_id))
    numbers = sorted(history)
    _add_missing(connection, organization_id, numbers)
    updates = []
    for number, entries in _rows(connection, organization_id, numbers):
        known = {c for _, c in entries}
        new = [(t, c) for t, c in history[number] if c not in known]
        if new:
            updates.append(_update(number, sorted(entries + new)))
    _write(connection, organization_id, updates)


def _slices(numbers: Sequence[str]) -> list[Sequence[str]]:
    return [
        numbers[start : start + NUMBERS_PER_STATEMENT]
        for start in range(0, len(numbers), NUMBERS_PER_STATEMENT)
    ]


def _rows(
    connection: sa.Connection, organization_id: str, numbers: Sequence[str]
) -> list[tuple[str, Entries]]:
    """(number, its entries) of the numbers that have a row."""
    rows: list[tuple[str, Entries]] = []
    for part in _slices(numbers):
        rows += [
            (row.phone_number, list(zip(row.sent_at, row.campaign_keys, strict=True)))
            for row in connection.execute(
                sa.select(
                    marketing_sends.c.phone_number,
                    marketing_sends.c.sent_at,
                    marketing_sends.c.campaign_keys,
                ).where(
                    marketing_sends.c.organization_id == organization_id,
                    marketing_sends.c.phone_number.in_(part),
                )
            )
        ]
    return rows


def _update(number: str, entries: Entries) -> dict[str, Any]:
    return {"number": number, "times": [t for t, _ in entries], "keys": [c for _, c in entries]}


def _write(connection: sa.Connection, organization_id: str, updates: list[dict[str, Any]]) -> None:
    statement = (
        marketing_sends.update()
        .where(
            marketing_sends.c.organization_id == organization_id,
            marketing_sends.c.phone_number == sa.bindparam("number"),
        )
        .values(sent_at=sa.bindparam("times"), campaign_keys=sa.bindparam("keys"))
    )
    for start in range(0, len(updates), ROWS_PER_STATEMENT):
        connection.execute(statement, updates[start : start + ROWS_PER_STATEMENT])


def _add_missing(connection: sa.Connection, organization_id: str, numbers: Sequence[str]) -> None:
    """Rows with no entries for numbers without one; being a write, it takes the write lock."""
    statement = (
        insert_for(connection, marketing_sends)
        .values(
            organization_id=organization_id,
            phone_number=sa.bindparam("number"),
            sent_at=sa.bindparam("times"),
            campaign_keys=sa.bindparam("keys"),
        )
        .on_conflict_do_nothing(index_elements=["organization_id", "phone_number"])
    )
    rows = [_update(number, []) for number in numbers]
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        connection.execute(statement, rows[start : start + ROWS_PER_STATEMENT])
