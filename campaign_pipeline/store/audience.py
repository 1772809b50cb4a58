"""A campaign's audience: the pending stream a send reads, the outcome writes, the counts.

Reads are keyset-paginated by audience id, a short query per chunk, so no transaction stays
open while messages are sent. Outcome writes are set-based (one statement per slice of
`ROWS_PER_STATEMENT`) and only ever move a recipient out of `pending`.
"""

import io
import itertools
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import polars as pl
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from campaign_pipeline.clock import as_utc, utcnow
from campaign_pipeline.payloads import RECIPIENT_SCHEMA, recipients_frame
from campaign_pipeline.store.engine import ROWS_PER_STATEMENT
from campaign_pipeline.store.records import IdRange, Outcomes, WriteAck
from campaign_pipeline.store.schema import AUDIENCE_STATUSES, campaign_audience, campaigns

_TEXT_ARRAY = postgresql.ARRAY(sa.Text)
# `number_keepers`' frame: a number several recipients have, and the one it is sent to.
KEEPER_SCHEMA = {"phone_number": pl.String, "keeper": pl.String}

# What `failed_by_code` counts a failed recipient as when it was failed before codes existed.
UNKNOWN_CODE = "unknown"

# PostgreSQL: one set-based UPDATE per slice, the outcomes passed as five arrays. Five bind
# parameters whatever the slice size, so the statement is compiled once (a VALUES list costs
# SQLAlchemy a compile per row count). It counts what it changed, by status, for the campaign's
# live counts.
_UPDATE_FROM_ARRAYS = sa.text(
    """
    WITH written AS (
        UPDATE campaign_audience AS audience
        SET status = outcome.status,
            sqs_message_id = outcome.sqs_message_id,
            failure_reason = outcome.failure_reason,
            failure_code = outcome.failure_code,
            updated_at = :now
        FROM unnest(:ids, :statuses, :message_ids, :reasons, :codes)
            AS outcome(id, status, sqs_message_id, failure_reason, failure_code)
        WHERE audience.id = outcome.id AND audience.status = 'pending'
        RETURNING audience.status
    )
    SELECT count(*) FILTER (WHERE status = 'ready_to_send') AS queued,
           count(*) FILTER (WHERE status = 'failed') AS failed
    FROM written
    """
).bindparams(
    *(
        sa.bindparam(name, type_=_TEXT_ARRAY)
        for name in ("ids", "statuses", "message_ids", "reasons", "codes")
    ),
    sa.bindparam("now", type_=sa.DateTime(timezone=True)),
)


def _pending_query(bounded: bool) -> sa.Select:
    conditions = [
        campaign_audience.c.campaign_id == sa.bindparam("campaign_id"),
        campaign_audience.c.status == "pending",
        campaign_audience.c.id > sa.bindparam("after"),
    ]
    if bounded:
        conditions.append(campaign_audience.c.id <= sa.bindparam("upto"))
    return (
        sa.select(
            campaign_audience.c.id,
            campaign_audience.c.phone_number,
            campaign_audience.c.name,
            sa.cast(campaign_audience.c.attributes, sa.Text),
        )
        .where(*conditions)
        .order_by(campaign_audience.c.id)
        .limit(sa.bindparam("limit"))
    )


def _copy_pending(
    connection: sa.Connection, campaign_id: str, after: str, upto: str | None, limit: int
) -> pl.DataFrame:
    """A chunk of pending recipients through COPY ... TO STDOUT (CSV), parsed by Polars in Rust.

    Fetching rows through the DBAPI builds a Python tuple per recipient; COPY hands over one
    buffer (psycopg binds the parameters client-side, so the statement stays parameterised).
    """
    statement = (
        "COPY (SELECT id, phone_number, name, attributes::text FROM campaign_audience"
        " WHERE campaign_id = %s AND status = 'pending' AND id > %s"
        + (" AND id <= %s" if upto is not None else "")
        + " ORDER BY id LIMIT %s) TO STDOUT (FORMAT csv)"
    )
    params = (campaign_id, after, *([upto] if upto is not None else []), limit)
    buffer = io.BytesIO()
    driver_connection: Any = connection.connection.driver_connection
    with driver_connection.cursor() as cursor, cursor.copy(statement, params) as copy:
        for block in copy:
            buffer.write(block)
    if not buffer.getbuffer().nbytes:
        return recipients_frame([])
    return pl.read_csv(
        buffer.getvalue(),
        has_header=False,
        new_columns=list(RECIPIENT_SCHEMA),
        schema=RECIPIENT_SCHEMA,
    )


def count_by_status(connection: sa.Connection, campaign_id: str) -> dict[str, int]:
    """How many of the campaign's recipients are in each status, on `connection`."""
    query = (
        sa.select(campaign_audience.c.status, sa.func.count())
        .where(campaign_audience.c.campaign_id == campaign_id)
        .group_by(campaign_audience.c.status)
    )
    counts: dict[str, int] = dict(connection.execute(query).tuples().all())
    return {status: counts.get(status, 0) for status in AUDIENCE_STATUSES}


def count_columns(counts: Mapping[str, int]) -> dict[str, int]:
    """The campaign's live count columns for recipient counts by status."""
    return {
        "queued_count": counts["ready_to_send"],
        "failed_count": counts["failed"],
        "pending_count": counts["pending"],
    }


class Audience:
    """The campaign_audience table as a send and its reports use it."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def pending_chunks(
        self, campaign_id: str, chunk_size: int, id_range: IdRange | None = None
    ) -> Iterator[pl.DataFrame]:
        """Yield the campaign's `pending` recipients (within `id_range`) in chunks, by id.

        Each chunk is its own short query (keyset pagination), so no transaction stays open
        while messages are sent, and memory holds one chunk at a time.
        """
        id_range = id_range or IdRange()
        after = id_range.after
        while True:
            with self.engine.connect() as connection:
                if connection.dialect.name == "postgresql":
                    chunk = _copy_pending(connection, campaign_id, after, id_range.upto, chunk_size)
                else:
                    rows = connection.execute(
                        _pending_query(id_range.upto is not None),
                        {
                            "campaign_id": campaign_id,
                            "after": after,
                            "upto": id_range.upto,
                            "limit": chunk_size,
                        },
                    ).all()
                    chunk = recipients_frame(rows)
            if chunk.is_empty():
                return
            yield chunk
            if chunk.height < chunk_size:
                return
            after = chunk["id"][-1]

    def preflight_chunks(
        self, campaign_id: str, pending: int, exact_up_to: int, slices: int
    ) -> tuple[Iterator[pl.DataFrame], bool]:
        """Chunks of pending recipients for the preflight count, and whether they are a sample.

        Up to `exact_up_to` pending: all of them. Above: `slices` runs of
        `exact_up_to // slices` recipients, one at the start of each of `slices` id ranges of
        equal size, so a sample spans the whole campaign whatever order ids were made in.
        """
        if pending <= exact_up_to:
            return self.pending_chunks(campaign_id, exact_up_to), False
        per_slice = max(1, exact_up_to // slices)
        ranges = self.id_ranges(campaign_id, max(1, pending // slices))

        def sample() -> Iterator[pl.DataFrame]:
            for id_range in ranges:
                # The slice's first chunk only: the rest of the range is not read.
                yield from itertools.islice(
                    self.pending_chunks(campaign_id, per_slice, id_range), 1
                )

        return sample(), True

    def id_ranges(self, campaign_id: str, recipients_per_range: int) -> list[IdRange]:
        """Split the campaign's pending recipients into consecutive ranges of about that size."""
        numbered = (
            sa.select(
                campaign_audience.c.id,
                sa.func.row_number().over(order_by=campaign_audience.c.id).label("n"),
            )
            .where(
                campaign_audience.c.campaign_id == campaign_id,
                campaign_audience.c.status == "pending",
            )
            .subquery()
        )
        with self.engine.connect() as connection:
            total = connection.execute(sa.select(sa.func.count()).select_from(numbered)).scalar()
            bounds = (
                connection.execute(
                    sa.select(numbered.c.id)
                    .where(numbered.c.n % recipients_per_range == 0, numbered.c.n < total)
                    .order_by(numbered.c.id)
                )
                .scalars()
                .all()
            )
        edges = ["", *bounds]
        return [
            IdRange(after=edge, upto=bounds[i] if i < len(bounds) else None)
            for i, edge in enumerate(edges)
        ]

    def record_outcomes(
        self,
        campaign_id: str,
        run_id: str,
        outcomes: Outcomes,
        lease_seconds: float,
    ) -> WriteAck:
        """Write outcomes of still-`pending` recipients in bulk and extend the run's lease.

        A recorded outcome is never overwritten. The campaign's queued, failed and pending
        counts move by what was written, in the same transaction, so readers see progress.
        Returns whether the run still holds the lease (if not, another run took over after it
        expired and the caller must stop sending) and the campaign's status (a pause stops it).
        """
        now = utcnow()
        queued = failed = 0
        with self.engine.begin() as connection:
            for start in range(0, len(outcomes), ROWS_PER_STATEMENT):
                rows = outcomes.rows(start, start + ROWS_PER_STATEMENT)
                sent, refused = self._update_audience(connection, rows, now)
                queued, failed = queued + sent, failed + refused
            holds = campaigns.c.lease_run_id == run_id
            row = connection.execute(
                campaigns.update()
                .where(campaigns.c.id == campaign_id)
                .values(
                    queued_count=campaigns.c.queued_count + queued,
                    failed_count=campaigns.c.failed_count + failed,
                    pending_count=campaigns.c.pending_count - (queued + failed),
                    lease_expires_at=sa.case(
                        (holds, now + timedelta(seconds=lease_seconds)),
                        else_=campaigns.c.lease_expires_at,
                    ),
                )
                .returning(campaigns.c.status, campaigns.c.lease_run_id)
            ).first()
        if row is None:
            return WriteAck(lease_held=False, status=None)
        return WriteAck(lease_held=row.lease_run_id == run_id, status=row.status)

    def _update_audience(
        self, connection: sa.Connection, rows: dict[str, list[Any]], now: datetime
    ) -> tuple[int, int]:
        """Write one slice of outcomes; returns how many became ready_to_send and failed."""
        if connection.dialect.name == "postgresql":
            counted = connection.execute(_UPDATE_FROM_ARRAYS, {**rows, "now": now}).one()
            return counted.queued, counted.failed
        # SQLite has no arrays; an in-process executemany is its fast path, one per status so
        # that its row count says how many of each were still pending.
        update = (
            campaign_audience.update()
            .where(
                campaign_audience.c.id == sa.bindparam("outcome_id"),
                campaign_audience.c.status == "pending",
            )
            .values(
                status=sa.bindparam("outcome_status"),
                sqs_message_id=sa.bindparam("outcome_message_id"),
                failure_reason=sa.bindparam("outcome_reason"),
                failure_code=sa.bindparam("outcome_code"),
                updated_at=now,
            )
        )
        written = {"ready_to_send": 0, "failed": 0}
        for status in written:
            parameters = [
                {
                    "outcome_id": id_,
                    "outcome_status": row_status,
                    "outcome_message_id": message_id,
                    "outcome_reason": reason,
                    "outcome_code": code,
                }
                for id_, row_status, message_id, reason, code in zip(*rows.values(), strict=True)
                if row_status == status
            ]
            if parameters:
                written[status] = connection.execute(update, parameters).rowcount
        return written["ready_to_send"], written["failed"]

    def counts(self, campaign_id: str) -> dict[str, int]:
        """How many of the campaign's recipients are in each status."""
        with self.engine.connect() as connection:
            return count_by_status(connection, campaign_id)

    def number_keepers(self, campaign_id: str, phone_numbers: Sequence[str]) -> pl.DataFrame:
        """Of `phone_numbers`, those several of the campaign's recipients have, and who gets each.

        The recipient a number is sent to is the one already queued, else the smallest audience
        id. Columns `phone_number` and `keeper`. One statement: on PostgreSQL over the numbers
        given (an index probe each); on SQLite, which has no arrays, over the whole campaign.
        """
        c = campaign_audience.c
        keeper = sa.func.coalesce(
            sa.func.min(c.id).filter(c.status == "ready_to_send"), sa.func.min(c.id)
        )
        conditions = [c.campaign_id == campaign_id, c.phone_number.is_not(None)]
        with self.engine.connect() as connection:
            postgres = connection.dialect.name == "postgresql"
            if postgres:
                numbers = sa.bindparam("numbers", list(phone_numbers), type_=_TEXT_ARRAY)
                conditions.append(c.phone_number == sa.any_(numbers))
            query = (
                sa.select(c.phone_number, keeper)
                .where(*conditions)
                .group_by(c.phone_number)
                .having(sa.func.count() > 1)
            )
            rows = connection.execute(query).all()
        keepers = pl.DataFrame(rows, schema=KEEPER_SCHEMA, orient="row")
        if not postgres:
            keepers = keepers.filter(pl.col("phone_number").is_in(list(phone_numbers)))
        return keepers

    def failed_by_code(self, campaign_id: str) -> dict[str, int]:
        """How many of the campaign's `failed` recipients have each failure code.

        Recipients failed before codes were recorded are counted as `unknown`.
        """
        code = sa.func.coalesce(campaign_audience.c.failure_code, UNKNOWN_CODE)
        query = (
            sa.select(code, sa.func.count())
            .where(
                campaign_audience.c.campaign_id == campaign_id,
                campaign_audience.c.status == "failed",
            )
            .group_by(code)
            .order_by(code)
        )
        with self.engine.connect() as connection:
            return dict(connection.execute(query).tuples().all())

    def progress_since(self, campaign_id: str, since: datetime) -> tuple[int, datetime | None]:
        """Recipients given an outcome since `since` (a run's start), and when the last was."""
        query = sa.select(sa.func.count(), sa.func.max(campaign_audience.c.updated_at)).where(
            campaign_audience.c.campaign_id == campaign_id,
            campaign_audience.c.status.in_(("ready_to_send", "failed")),
            campaign_audience.c.updated_at >= since,
        )
        with self.engine.connect() as connection:
            handled, last = connection.execute(query).one()
        return int(handled), as_utc(last)
