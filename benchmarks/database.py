"""The benchmark's campaign store: a throwaway PostgreSQL database, seeded and reset the same way.

Every measurement must start from the same rows, so `reset` puts every status back with set-based
updates and a `VACUUM ANALYZE`. Rows are loaded with COPY: a million recipients take seconds.
"""

import contextlib
import io
import json
import os
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from dataset import CAMPAIGNS, ORGANIZATION_ID, invalid_count, recipient, split_evenly

from campaign_pipeline.resources.campaign_store import CampaignStore

ADMIN_URL = os.environ.get(
    "BENCHMARK_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
ROWS_PER_COPY = 50_000
SENSOR_CAMPAIGN_PREFIX = "sensor-benchmark-"


@dataclass(frozen=True)
class SeededCampaigns:
    """What `seed` wrote: the campaigns in order, their sizes and their invalid recipients."""

    campaign_ids: tuple[str, ...]
    sizes: tuple[int, ...]
    invalid: tuple[int, ...]

    @property
    def recipients(self) -> int:
        """All recipients of all campaigns."""
        return sum(self.sizes)


@contextlib.contextmanager
def temporary_database() -> Iterator[str]:
    """A fresh, empty database for one benchmark, dropped afterwards; yields its URL."""
    name = f"campaign_benchmark_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _copy_rows(database_url: str, statement: str, rows: Iterator[str]) -> None:
    """Feed tab-separated `rows` to COPY in blocks, so a million rows never sit in one string."""
    with (
        psycopg.connect(database_url) as connection,
        connection.cursor() as cursor,
        cursor.copy(statement) as copy,
    ):
        block = io.StringIO()
        for count, row in enumerate(rows, start=1):
            block.write(row)
            if count % ROWS_PER_COPY == 0:
                copy.write(block.getvalue())
                block = io.StringIO()
        copy.write(block.getvalue())


def _copy_text(value: str) -> str:
    """`value` escaped for COPY's text format."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")


def _audience_rows(campaign_ids: Sequence[str], sizes: Sequence[int]) -> Iterator[str]:
    index = 0
    for campaign_id, size in zip(campaign_ids, sizes, strict=True):
        for _ in range(size):
            phone, name, attributes = recipient(index)
            attributes_json = _copy_text(json.dumps(attributes, ensure_ascii=False))
            yield f"{uuid.uuid4()}\t{campaign_id}\t{phone}\t{name}\t{attributes_json}\n"
            index += 1


def seed(database_url: str, recipients: int, campaigns: int = len(CAMPAIGNS)) -> SeededCampaigns:
    """Create the schema and the first `campaigns` campaigns, sharing `recipients` recipients.

    All six by default, one per message type; one alone makes a single large campaign.
    """
    store = CampaignStore(database_url=database_url)
    store.create_schema()
    campaign_ids = tuple(
        store.campaigns.add(organization_id=ORGANIZATION_ID, status="asset_generated", **campaign)
        for campaign in CAMPAIGNS[:campaigns]
    )
    store.engine.dispose()
    sizes = tuple(split_evenly(recipients, len(campaign_ids)))
    _copy_rows(
        database_url,
        "COPY campaign_audience (id, campaign_id, phone_number, name, attributes) FROM STDIN",
        _audience_rows(campaign_ids, sizes),
    )
    firsts = [sum(sizes[:position]) for position in range(len(sizes))]
    invalid = tuple(invalid_count(first, size) for first, size in zip(firsts, sizes, strict=True))
    return SeededCampaigns(campaign_ids, sizes, invalid)


def reset(database_url: str, campaign_ids: Sequence[str]) -> None:
    """Put every recipient back to `pending` and every campaign back to `asset_generated`."""
    with psycopg.connect(database_url) as connection:
        connection.execute(
            "UPDATE campaign_audience SET status = 'pending', sqs_message_id = NULL, "
            "failure_reason = NULL, failure_code = NULL WHERE campaign_id = ANY(%s)",
            (list(campaign_ids),),
        )
        connection.execute(
            "UPDATE campaigns SET status = 'asset_generated', lease_run_id = NULL, "
            "lease_expires_at = NULL, last_error = NULL, queued_count = 0, failed_count = 0, "
            "pending_count = 0 WHERE id = ANY(%s)",
            (list(campaign_ids),),
        )
    # VACUUM cannot run inside a transaction.
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE campaign_audience")
        connection.execute("VACUUM ANALYZE campaigns")


def _sensor_campaign_rows(total: int, waiting: int) -> Iterator[str]:
    now = datetime.now(UTC)
    parameters = _copy_text(json.dumps(CAMPAIGNS[0]["template_parameters"], ensure_ascii=False))
    # The waiting campaigns are spread over the table, not bunched at its end.
    waiting_every = max(1, total // waiting)
    for index in range(total):
        if index % waiting_every == 0 and index // waiting_every < waiting:
            status = "asset_generated"
        else:
            status = "ready_to_launch" if index % 3 else "draft"
        updated = (now - timedelta(minutes=total - index)).isoformat()
        yield (
            f"{uuid.uuid4()}\t{ORGANIZATION_ID}\t{SENSOR_CAMPAIGN_PREFIX}{index}\t{status}\t"
            f"template\torder_shipped_update\tpt_BR\t{parameters}\t{updated}\t{updated}\n"
        )


def add_sensor_campaigns(database_url: str, total: int, waiting: int) -> None:
    """Add `total` campaigns, `waiting` of them `asset_generated`, the rest launched or drafts."""
    _copy_rows(
        database_url,
        "COPY campaigns (id, organization_id, name, status, message_type, template_name, "
        "template_language, template_parameters, created_at, updated_at) FROM STDIN",
        _sensor_campaign_rows(total, waiting),
    )
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("ANALYZE campaigns")


def delete_sensor_campaigns(database_url: str) -> None:
    """Remove what `add_sensor_campaigns` added."""
    with psycopg.connect(database_url) as connection:
        connection.execute(
            "DELETE FROM campaigns WHERE name LIKE %s", (SENSOR_CAMPAIGN_PREFIX + "%",)
        )


# The campaigns neither scheduled nor due, as shares of a hundred repeating through the table:
# mostly finished launches, some drafts, a few stopped by an operator or failed.
SETTLED_MIX = (
    ("ready_to_launch", 80),
    ("draft", 8),
    ("paused", 4),
    ("cancelled", 4),
    ("failed", 4),
)
SCHEDULE_DAYS = 7  # scheduled campaigns' send_at: from five minutes to this many days ahead
_NULL = "\\N"  # COPY's text format for NULL


@dataclass(frozen=True)
class CampaignMix:
    """The campaigns table `seed_campaign_mix` writes.

    `scheduled` campaigns are `asset_generated` with `send_at` ahead, `due` are `asset_generated`
    and due now (half with `send_at` unset, half with it passed), the rest follow `SETTLED_MIX`.
    Without `send_at` (the baseline), no campaign has one: the scheduled ones are due too.
    """

    total: int = 100_000
    scheduled: int = 10_000
    due: int = 20
    send_at: bool = True


def _campaign_mix_rows(mix: CampaignMix) -> Iterator[str]:
    now = datetime.now(UTC)
    rng = random.Random(0)  # the same send_at offsets every time
    parameters = _copy_text(json.dumps(CAMPAIGNS[0]["template_parameters"], ensure_ascii=False))
    settled = [status for status, share in SETTLED_MIX for _ in range(share)]
    waiting = mix.scheduled + mix.due
    waiting_seen = settled_seen = 0
    for index in range(mix.total):
        updated = now - timedelta(minutes=mix.total - index)
        send_at: datetime | None = None
        extra = [_NULL] * 6  # processed_at, paused_at, paused_by, cancelled_at, cancelled_by, error
        # The waiting campaigns are spread evenly over the table (and over updated_at), and the
        # due ones evenly among them: the sensor's scan meets scheduled rows before each due one.
        if waiting and (index * waiting) % mix.total < waiting:
            status = "asset_generated"
            is_due = (waiting_seen * mix.due) % waiting < mix.due
            if not is_due:
                send_at = now + timedelta(seconds=rng.uniform(300, SCHEDULE_DAYS * 86_400))
            elif waiting_seen % 2:
                send_at = updated + timedelta(seconds=rng.uniform(0, 30))
            waiting_seen += 1
        else:
            status = settled[settled_seen % len(settled)]
            settled_seen += 1
            done = (updated + timedelta(seconds=30)).isoformat()
            if status == "ready_to_launch":
                extra[0] = done
            elif status == "paused":
                extra[1:3] = [done, "benchmark@host (cli)"]
            elif status == "cancelled":
                extra[3:5] = [done, "benchmark@host (cli)"]
            elif status == "failed":
                extra[5] = "SendInterrupted: SQS failed past its retries"
        when = send_at.isoformat() if send_at is not None and mix.send_at else _NULL
        stamp = updated.isoformat()
        yield (
            "\t".join(
                [
                    str(uuid.uuid4()),
                    ORGANIZATION_ID,
                    f"{SENSOR_CAMPAIGN_PREFIX}{index}",
                    status,
                    "template",
                    "order_shipped_update",
                    "pt_BR",
                    parameters,
                    stamp,
                    stamp,
                    when,
                    *extra,
                ]
            )
            + "\n"
        )


def seed_campaign_mix(database_url: str, mix: CampaignMix) -> None:
    """Create the schema (`create_schema`: tables and indexes) and the campaigns of `mix`.

    Campaigns only, no recipients. Ends with `VACUUM ANALYZE`, so plans see the real rows.
    """
    store = CampaignStore(database_url=database_url)
    store.create_schema()
    store.engine.dispose()
    _copy_rows(
        database_url,
        "COPY campaigns (id, organization_id, name, status, message_type, template_name, "
        "template_language, template_parameters, created_at, updated_at, send_at, processed_at, "
        "paused_at, paused_by, cancelled_at, cancelled_by, last_error) FROM STDIN",
        _campaign_mix_rows(mix),
    )
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE campaigns")


def server_version(database_url: str) -> str:
    """PostgreSQL's version string, for the results' machine description."""
    with psycopg.connect(database_url) as connection:
        row = connection.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "unknown"
