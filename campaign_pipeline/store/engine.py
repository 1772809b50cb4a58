"""Where the campaign database is and how to connect to it: SQLite or PostgreSQL (psycopg 3)."""

import os
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from campaign_pipeline.clock import as_utc

DATABASE_URL_VARIABLE = "CAMPAIGN_DATABASE_URL"
# Rows per statement when inserting or recording outcomes, to bound each statement's size.
ROWS_PER_STATEMENT = 5_000


def insert_for(connection: sa.Connection, table: sa.Table) -> Any:
    """The dialect's INSERT of `table`, which has ON CONFLICT (PostgreSQL's or SQLite's)."""
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def database_now(connection: sa.Connection) -> datetime:
    """The database's clock, in UTC (rows' `created_at` defaults are its clock too)."""
    return as_utc(
        connection.execute(sa.select(sa.func.now(type_=sa.DateTime(timezone=True)))).scalar_one()
    )


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
