"""The database of campaigns and their audiences, spoken to in the pipeline's own verbs."""

import io
import itertools
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import sqlalchemy as sa
from pydantic import Field, PrivateAttr
from sqlalchemy.dialects import postgresql

from campaign_pipeline.clock import as_utc
from campaign_pipeline.errors import CampaignBusy, CampaignNotFound
from campaign_pipeline.lifecycle import Command, refusal
from campaign_pipeline.payloads import (
    RECIPIENT_SCHEMA,
    CampaignMessage,
    parse_template_parameters,
    recipients_frame,
)
from campaign_pipeline.resources.campaign_control import ControlResult, apply_command, schedule
from campaign_pipeline.schema import AUDIENCE_STATUSES, campaign_audience, campaigns, metadata

DATABASE_URL_VARIABLE = "CAMPAIGN_DATABASE_URL"
# Rows per statement when inserting or recording outcomes, to bound each statement's size.
ROWS_PER_STATEMENT = 5_000


# PostgreSQL: one set-based UPDATE per slice, the outcomes passed as four arrays. Four bind
# parameters whatever the slice size, so the statement is compiled once (a VALUES list of N rows
# cost SQLAlchemy ~0.2 ms a row to compile, measured here). It counts what it changed, by status,
# for the campaign's live counts.
_UPDATE_FROM_ARRAYS = sa.text(
    """
    WITH written AS (
        UPDATE campaign_audience AS audience
        SET status = outcome.status,
            sqs_message_id = outcome.sqs_message_id,
            failure_reason = outcome.failure_reason,
            updated_at = :now
        FROM unnest(:ids, :statuses, :message_ids, :reasons)
            AS outcome(id, status, sqs_message_id, failure_reason)
        WHERE audience.id = outcome.id AND audience.status = 'pending'
        RETURNING audience.status
    )
    SELECT count(*) FILTER (WHERE status = 'ready_to_send') AS queued,
           count(*) FILTER (WHERE status = 'failed') AS failed
    FROM written
    """
).bindparams(
    *(
        sa.bindparam(name, type_=postgresql.ARRAY(sa.Text))
        for name in ("ids", "statuses", "message_ids", "reasons")
    ),
    sa.bindparam("now", type_=sa.DateTime(timezone=True)),
)


@dataclass(frozen=True)
class CampaignToProcess:
    """A campaign waiting in `asset_generated` (or resumed), as the sensor sees it."""

    id: str
    organization_id: str
    version: int
    name: str = ""


@dataclass(frozen=True)
class ScheduledCampaign:
    """The next campaign in `asset_generated` whose `send_at` is still ahead."""

    id: str
    name: str
    send_at: datetime


@dataclass(frozen=True)
class StalledCampaign:
    """A `ready_to_launch` campaign with pending recipients and no live run, to be resumed."""

    id: str
    organization_id: str
    version: int
    resume_attempts: int
    last_error: str | None
    # The run whose lease has not expired yet, if any: live unless Dagster says it finished.
    lease_run_id: str | None = None


@dataclass(frozen=True)
class Claim:
    """A campaign this run may send for, and whether it resumes an earlier run's work."""

    message: CampaignMessage
    name: str
    resumed: bool
    counts: dict[str, int] = field(default_factory=dict)
    # The campaign's own rate cap (`max_messages_per_second`), as stored; None when unset.
    max_messages_per_second: float | None = None
    # `resume --accept-invalid`: send the valid recipients whatever the preflight counts.
    invalid_accepted: bool = False


@dataclass(frozen=True)
class WriteAck:
    """What an outcome write or lease renewal learnt: the lease still held, the status now."""

    lease_held: bool
    status: str | None


@dataclass(frozen=True)
class IdRange:
    """Recipients with `after < id <= upto` (no upper bound when `upto` is None)."""

    after: str = ""
    upto: str | None = None


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


@dataclass
class Outcomes:
    """Final states of recipients as parallel columns: cheap to gather, sent as arrays.

    `ready_to_send` rows carry the SQS message id, `failed` rows the reason.
    """

    ids: list[str] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    message_ids: list[str | None] = field(default_factory=list)
    failure_reasons: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def add_sent(self, ids: Sequence[str], message_ids: Sequence[str]) -> None:
        """Recipients SQS accepted, with their message ids."""
        self.ids += ids
        self.statuses += ["ready_to_send"] * len(ids)
        self.message_ids += message_ids
        self.failure_reasons += [None] * len(ids)

    def add_failed(self, ids: Sequence[str], reasons: Sequence[str]) -> None:
        """Recipients that will not be sent, with why."""
        self.ids += ids
        self.statuses += ["failed"] * len(ids)
        self.message_ids += [None] * len(ids)
        self.failure_reasons += reasons

    def rows(self, start: int, stop: int) -> dict[str, list[Any]]:
        """Columns of rows `start` to `stop`, named as the SQL's parameters."""
        return {
            "ids": self.ids[start:stop],
            "statuses": self.statuses[start:stop],
            "message_ids": self.message_ids[start:stop],
            "reasons": self.failure_reasons[start:stop],
        }


def default_database_url() -> str:
    """`CAMPAIGN_DATABASE_URL`, else a SQLite file in `$DAGSTER_HOME` or the working directory."""
    if url := os.environ.get(DATABASE_URL_VARIABLE):
        return url
    directory = Path(os.environ.get("DAGSTER_HOME") or Path.cwd())
    return f"sqlite:///{directory / 'campaigns.db'}"


def normalise_database_url(url: str) -> str:
    """Make a plain `postgresql://` URL use psycopg 3, whatever SQLAlchemy's default driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def make_engine(url: str) -> sa.Engine:
    """An engine for `url`; SQLite gets WAL and a busy timeout so concurrent runs wait, not fail.

    Errors never quote the statement's parameters: they hold phone numbers and names.
    """
    url = normalise_database_url(url)
    if url.startswith("postgresql"):
        # libpq would wait about two minutes for a host that does not answer.
        return sa.create_engine(
            url,
            pool_pre_ping=True,
            hide_parameters=True,
            connect_args={"connect_timeout": 10},
        )
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True, hide_parameters=True)
    engine = sa.create_engine(url, hide_parameters=True, connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _sqlite_pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def _now() -> datetime:
    return datetime.now(UTC)


def _message(row: Mapping[Any, Any]) -> CampaignMessage:
    return CampaignMessage(
        campaign_id=row["id"],
        organization_id=row["organization_id"],
        message_type=row["message_type"],
        template_name=row["template_name"],
        template_language=row["template_language"],
        template_parameters=parse_template_parameters(row["template_parameters"]),
        message_content=row["message_content"],
        media_url=row["media_url"],
        caption=row["caption"],
    )


def campaign_message(row: Mapping[Any, Any]) -> CampaignMessage:
    """The campaign-level part of its payloads, from its row, exactly as a run's claim reads it.

    Raises:
        CampaignDefinitionError: the stored template parameters are malformed.
    """
    return _message(row)


def _count_recipients(connection: sa.Connection, campaign_id: str) -> dict[str, int]:
    query = (
        sa.select(campaign_audience.c.status, sa.func.count())
        .where(campaign_audience.c.campaign_id == campaign_id)
        .group_by(campaign_audience.c.status)
    )
    counts: dict[str, int] = dict(connection.execute(query).tuples().all())
    return {status: counts.get(status, 0) for status in AUDIENCE_STATUSES}


def _count_columns(counts: Mapping[str, int]) -> dict[str, int]:
    return {
        "queued_count": counts["ready_to_send"],
        "failed_count": counts["failed"],
        "pending_count": counts["pending"],
    }


class CampaignStore(dg.ConfigurableResource):
    """Campaigns and their audiences in SQLite or PostgreSQL (SQLAlchemy Core, psycopg 3)."""

    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the campaign database. Unset: CAMPAIGN_DATABASE_URL, "
        "else a SQLite file campaigns.db in $DAGSTER_HOME or the working directory.",
    )

    _engine: sa.Engine | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Open the connection pool once per run."""
        self._engine = make_engine(self.database_url or default_database_url())

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        """Close the connection pool."""
        if self._engine is not None:
            self._engine.dispose()

    @property
    def engine(self) -> sa.Engine:
        """The engine (made on first use outside a Dagster run)."""
        if self._engine is None:
            self._engine = make_engine(self.database_url or default_database_url())
        return self._engine

    def create_schema(self) -> None:
        """Create the tables and indexes that do not exist yet, and columns added since."""
        metadata.create_all(self.engine)
        # create_all leaves existing tables alone. Columns added to the schema later are all
        # nullable or have a server default, so ADD COLUMN (and CREATE INDEX for their indexes)
        # upgrades a database in place. Names and types come from `schema.py`, never from input.
        with self.engine.begin() as connection:
            inspector = sa.inspect(connection)
            for table in metadata.sorted_tables:
                present = {column["name"] for column in inspector.get_columns(table.name)}
                for column in table.columns:
                    if column.name not in present:
                        definition = sa.schema.CreateColumn(column).compile(connection)
                        connection.exec_driver_sql(
                            f"ALTER TABLE {table.name} ADD COLUMN {definition}"
                        )
                for index in table.indexes:
                    index.create(connection, checkfirst=True)

    def add_campaign(self, **fields: Any) -> str:
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

    def get_campaign(self, campaign_id: str) -> dict[str, Any] | None:
        """The campaign's row, or None."""
        with self.engine.connect() as connection:
            row = (
                connection.execute(sa.select(campaigns).where(campaigns.c.id == campaign_id))
                .mappings()
                .first()
            )
        return dict(row) if row else None

    def campaigns_to_process(self, limit: int) -> list[CampaignToProcess]:
        """Up to `limit` campaigns to start, the longest waiting first.

        Those in `asset_generated` whose `send_at` has come (or is unset), and those `resume`
        set back to `ready_to_launch` once no run holds them.
        """
        now = _now()
        columns = (
            campaigns.c.id,
            campaigns.c.organization_id,
            campaigns.c.version,
            campaigns.c.name,
            campaigns.c.updated_at,
        )
        # Three queries, each an index range, rather than one OR the planner cannot split: an
        # OR on send_at filtered every scheduled campaign row by row (10k of them: 14 ms).
        unscheduled = sa.select(*columns).where(
            campaigns.c.status == "asset_generated", campaigns.c.send_at.is_(None)
        )
        due = sa.select(*columns).where(
            campaigns.c.status == "asset_generated", campaigns.c.send_at <= now
        )
        resumed = sa.select(*columns).where(
            campaigns.c.resumed_at.is_not(None),
            campaigns.c.status == "ready_to_launch",
            sa.or_(campaigns.c.lease_run_id.is_(None), campaigns.c.lease_expires_at < now),
        )
        oldest = (campaigns.c.updated_at, campaigns.c.id)
        waiting = sa.union_all(
            *(
                query.order_by(*oldest).limit(limit).subquery().select()
                for query in (unscheduled, due, resumed)
            )
        ).subquery()
        query = (
            sa.select(waiting.c.id, waiting.c.organization_id, waiting.c.version, waiting.c.name)
            .order_by(waiting.c.updated_at, waiting.c.id)
            .limit(limit)
        )
        with self.engine.connect() as connection:
            return [CampaignToProcess(*row) for row in connection.execute(query)]

    def next_scheduled(self) -> ScheduledCampaign | None:
        """The `asset_generated` campaign whose `send_at` comes next, if any is ahead."""
        query = (
            sa.select(campaigns.c.id, campaigns.c.name, campaigns.c.send_at)
            .where(campaigns.c.status == "asset_generated", campaigns.c.send_at > _now())
            .order_by(campaigns.c.send_at)
            .limit(1)
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        if row is None:
            return None
        return ScheduledCampaign(row.id, row.name, as_utc(row.send_at) or row.send_at)

    def claim(
        self,
        campaign_id: str,
        run_id: str,
        lease_seconds: float,
        take_over_from: str | None = None,
        send_now: bool = False,
    ) -> Claim:
        """Take the campaign for `run_id`: `asset_generated` becomes `ready_to_launch`.

        A campaign already `ready_to_launch` is resumed, unless another run's lease is live.
        `take_over_from` names a run known to be gone whose live lease may be taken: the
        takeover is a compare-and-set on that run id, so it fails if the lease changed hands.
        A campaign whose `send_at` is ahead is taken only with `send_now`. The campaign's
        counts are set from its recipients, for live progress.
        Raises `CampaignNotFound`, `CampaignStopped` (paused, cancelled), `CampaignScheduled`,
        `CampaignNotProcessable` or `CampaignBusy`.
        """
        now = _now()
        lease = {
            "lease_run_id": run_id,
            "lease_expires_at": now + timedelta(seconds=lease_seconds),
            "last_run_id": run_id,
            "resumed_at": None,
        }
        by_id = campaigns.c.id == campaign_id
        counts: dict[str, int] = {}
        due = (
            [] if send_now else [sa.or_(campaigns.c.send_at.is_(None), campaigns.c.send_at <= now)]
        )
        with self.engine.begin() as connection:
            # Lock the row first (PostgreSQL): otherwise a commit between the updates below and
            # the final read could show a row neither update saw. SQLite has one writer anyway.
            connection.execute(sa.select(campaigns.c.id).where(by_id).with_for_update())
            claimed = connection.execute(
                campaigns.update()
                .where(by_id, campaigns.c.status == "asset_generated", *due)
                .values(
                    status="ready_to_launch",
                    version=campaigns.c.version + 1,
                    updated_at=now,
                    resume_attempts=0,
                    **lease,
                )
            ).rowcount
            resumed = False
            if not claimed:
                free = [
                    campaigns.c.lease_run_id.is_(None),
                    campaigns.c.lease_run_id == run_id,
                    campaigns.c.lease_expires_at < now,
                ]
                if take_over_from:
                    free.append(campaigns.c.lease_run_id == take_over_from)
                resumed = bool(
                    connection.execute(
                        campaigns.update()
                        .where(
                            by_id,
                            campaigns.c.status == "ready_to_launch",
                            sa.or_(*free),
                        )
                        .values(**lease)
                    ).rowcount
                )
            if claimed or resumed:
                counts = _count_recipients(connection, campaign_id)
                connection.execute(campaigns.update().where(by_id).values(**_count_columns(counts)))
            row = connection.execute(sa.select(campaigns).where(by_id)).mappings().first()
        if row is None:
            raise CampaignNotFound(f"campaign {campaign_id} does not exist")
        if not (claimed or resumed):
            raise refusal(dict(row), now=now, send_now=send_now, run_id=run_id) or CampaignBusy(
                f"campaign {campaign_id} is being processed by run {row['lease_run_id']}",
                lease_run_id=row["lease_run_id"],
            )
        return Claim(
            message=_message(row),
            name=row["name"],
            resumed=resumed,
            counts=counts,
            max_messages_per_second=row["max_messages_per_second"],
            invalid_accepted=row["invalid_accepted_at"] is not None,
        )

    def control(
        self, campaign_id: str, command: Command, actor: str, accept_invalid: bool = False
    ) -> ControlResult:
        """Pause, resume or cancel the campaign for `actor` (see `campaign_control`)."""
        return apply_command(self.engine, campaign_id, command, actor, accept_invalid)

    def schedule(self, campaign_id: str, send_at: datetime | None, actor: str) -> ControlResult:
        """Set or clear the campaign's `send_at` (see `campaign_control.schedule`)."""
        return schedule(self.engine, campaign_id, send_at, actor)

    def fail_campaign(self, campaign_id: str, reason: str) -> None:
        """Mark the campaign `failed` with `reason`; its recipients are left as they are."""
        with self.engine.begin() as connection:
            connection.execute(
                campaigns.update()
                .where(campaigns.c.id == campaign_id)
                .values(
                    status="failed",
                    last_error=reason,
                    last_error_at=_now(),
                    version=campaigns.c.version + 1,
                    updated_at=_now(),
                    lease_run_id=None,
                    lease_expires_at=None,
                )
            )

    def record_run_failure(
        self, campaign_id: str, run_id: str, error: str, failed_at: datetime
    ) -> bool:
        """Write a failed run's error onto the campaign and release the lease if the run held it.

        Recipients are left as they are. The error is written when the run is the campaign's
        last run, or when no run holds the campaign and none finished it after `failed_at`:
        a stale failure (a duplicate run refused at the claim, a run a later run has already
        made good) never overwrites a newer state. Returns whether the error was written.
        """
        by_id = campaigns.c.id == campaign_id
        with self.engine.begin() as connection:
            recorded = connection.execute(
                campaigns.update()
                .where(
                    by_id,
                    sa.or_(
                        campaigns.c.last_run_id == run_id,
                        sa.and_(
                            campaigns.c.lease_run_id.is_(None),
                            sa.or_(
                                campaigns.c.processed_at.is_(None),
                                campaigns.c.processed_at < failed_at,
                            ),
                        ),
                    ),
                )
                .values(
                    last_error=error,
                    last_error_at=failed_at,
                    last_error_run_id=run_id,
                    # A resumed campaign whose run failed is the recovery sensor's again.
                    resumed_at=None,
                )
            ).rowcount
            connection.execute(
                campaigns.update()
                .where(by_id, campaigns.c.lease_run_id == run_id)
                .values(lease_run_id=None, lease_expires_at=None)
            )
        return bool(recorded)

    def stalled_campaigns(
        self, limit: int, busy_campaign_ids: Iterable[str], live_run_ids: Iterable[str]
    ) -> list[StalledCampaign]:
        """Up to `limit` `ready_to_launch` campaigns with pending recipients and no live run.

        `busy_campaign_ids` have a run that has not finished; a lease held by one of
        `live_run_ids` is live too. A campaign whose unexpired lease is held by any other run
        comes with that run's id, for the caller to ask Dagster whether it has finished.
        The longest untouched come first.
        """
        pending = (
            sa.exists()
            .where(
                campaign_audience.c.campaign_id == campaigns.c.id,
                campaign_audience.c.status == "pending",
            )
            .correlate(campaigns)
        )
        query = (
            sa.select(
                campaigns.c.id,
                campaigns.c.organization_id,
                campaigns.c.version,
                campaigns.c.resume_attempts,
                campaigns.c.last_error,
                sa.case(
                    (campaigns.c.lease_expires_at >= _now(), campaigns.c.lease_run_id),
                    else_=sa.null(),
                ),
            )
            .where(
                campaigns.c.status == "ready_to_launch",
                # Resumed by an operator: the processing sensor starts those.
                campaigns.c.resumed_at.is_(None),
                campaigns.c.id.not_in(list(busy_campaign_ids)),
                sa.or_(
                    campaigns.c.lease_run_id.is_(None),
                    campaigns.c.lease_run_id.not_in(list(live_run_ids)),
                ),
                pending,
            )
            .order_by(campaigns.c.updated_at, campaigns.c.id)
            .limit(limit)
        )
        with self.engine.connect() as connection:
            return [StalledCampaign(*row) for row in connection.execute(query)]

    def _unchanged(self, campaign: StalledCampaign) -> list[sa.ColumnElement[bool]]:
        """The campaign is still as `stalled_campaigns` saw it (for compare-and-set)."""
        return [
            campaigns.c.id == campaign.id,
            campaigns.c.status == "ready_to_launch",
            campaigns.c.version == campaign.version,
            campaigns.c.resume_attempts == campaign.resume_attempts,
        ]

    def start_resume_attempt(self, campaign: StalledCampaign) -> bool:
        """Count one more resume attempt, unless the campaign changed since it was read."""
        with self.engine.begin() as connection:
            return bool(
                connection.execute(
                    campaigns.update()
                    .where(*self._unchanged(campaign))
                    # updated_at moves the campaign behind the other stalled ones.
                    .values(resume_attempts=campaigns.c.resume_attempts + 1, updated_at=_now())
                ).rowcount
            )

    def give_up(self, campaign: StalledCampaign, reason: str) -> bool:
        """Mark a stalled campaign `failed` with `reason`, unless it changed since it was read."""
        now = _now()
        with self.engine.begin() as connection:
            return bool(
                connection.execute(
                    campaigns.update()
                    .where(*self._unchanged(campaign))
                    .values(
                        status="failed",
                        last_error=reason,
                        last_error_at=now,
                        version=campaigns.c.version + 1,
                        updated_at=now,
                        lease_run_id=None,
                        lease_expires_at=None,
                    )
                ).rowcount
            )

    def iter_pending_recipients(
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
            return self.iter_pending_recipients(campaign_id, exact_up_to), False
        per_slice = max(1, exact_up_to // slices)
        ranges = self.id_ranges(campaign_id, max(1, pending // slices))

        def sample() -> Iterator[pl.DataFrame]:
            for id_range in ranges:
                # The slice's first chunk only: the rest of the range is not read.
                yield from itertools.islice(
                    self.iter_pending_recipients(campaign_id, per_slice, id_range), 1
                )

        return sample(), True

    def hold_back(self, campaign_id: str, run_id: str, reason: str, actor: str) -> bool:
        """Pause the campaign a run holds, with `reason` as its last error, and release it.

        For the guards: a campaign that must not be sent as it is. One compare-and-set on the
        run's lease, so nothing else has taken the campaign meanwhile. Returns whether it did.
        """
        now = _now()
        with self.engine.begin() as connection:
            return bool(
                connection.execute(
                    campaigns.update()
                    .where(
                        campaigns.c.id == campaign_id,
                        campaigns.c.lease_run_id == run_id,
                        campaigns.c.status.in_(("ready_to_launch", "paused")),
                    )
                    .values(
                        status="paused",
                        version=campaigns.c.version + 1,
                        updated_at=now,
                        paused_at=now,
                        paused_by=actor,
                        resumed_at=None,
                        last_error=reason,
                        last_error_at=now,
                        last_error_run_id=run_id,
                        lease_run_id=None,
                        lease_expires_at=None,
                    )
                ).rowcount
            )

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
        now = _now()
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
                }
                for id_, row_status, message_id, reason in zip(*rows.values(), strict=True)
                if row_status == status
            ]
            if parameters:
                written[status] = connection.execute(update, parameters).rowcount
        return written["ready_to_send"], written["failed"]

    def renew_lease(self, campaign_id: str, run_id: str, lease_seconds: float) -> bool:
        """Extend the run's lease by `lease_seconds` from now; False if it no longer holds it."""
        with self.engine.begin() as connection:
            return self._extend_lease(
                connection, campaign_id, run_id, _now() + timedelta(seconds=lease_seconds)
            )

    def _extend_lease(
        self,
        connection: sa.Connection,
        campaign_id: str,
        run_id: str,
        lease_until: datetime,
    ) -> bool:
        return bool(
            connection.execute(
                campaigns.update()
                .where(campaigns.c.id == campaign_id, campaigns.c.lease_run_id == run_id)
                .values(lease_expires_at=lease_until)
            ).rowcount
        )

    def release(self, campaign_id: str, run_id: str) -> None:
        """Give up the run's lease, so a rerun need not wait for it to expire."""
        with self.engine.begin() as connection:
            connection.execute(
                campaigns.update()
                .where(campaigns.c.id == campaign_id, campaigns.c.lease_run_id == run_id)
                .values(lease_run_id=None, lease_expires_at=None)
            )

    def count_recipients(self, campaign_id: str) -> dict[str, int]:
        """How many of the campaign's recipients are in each status."""
        with self.engine.connect() as connection:
            return _count_recipients(connection, campaign_id)

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

    def campaign_status(self, campaign_id: str) -> str | None:
        """The campaign's status now (None if it does not exist); a sending run polls it."""
        with self.engine.connect() as connection:
            return connection.execute(
                sa.select(campaigns.c.status).where(campaigns.c.id == campaign_id)
            ).scalar()

    def finish(self, campaign_id: str, run_id: str) -> dict[str, int]:
        """Store the campaign's final counts, release the lease; returns the counts.

        With nothing left pending, the last error and the resume attempts are cleared.
        """
        counts = self.count_recipients(campaign_id)
        values: dict[str, Any] = {
            **_count_columns(counts),
            "processed_at": _now(),
            "lease_run_id": None,
            "lease_expires_at": None,
        }
        if not counts["pending"]:
            values |= {
                "last_error": None,
                "last_error_at": None,
                "last_error_run_id": None,
                "resume_attempts": 0,
            }
        with self.engine.begin() as connection:
            connection.execute(
                campaigns.update()
                .where(campaigns.c.id == campaign_id, campaigns.c.lease_run_id == run_id)
                .values(**values)
            )
        return counts
