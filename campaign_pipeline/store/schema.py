"""The campaign store's tables (SQLAlchemy Core, SQLite and PostgreSQL), and their upgrade."""

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

metadata = sa.MetaData()

AUDIENCE_STATUSES = ("pending", "ready_to_send", "failed")
# `draft` and `asset_generated` are set upstream; the pipeline moves a campaign to
# `ready_to_launch` (and `failed`); operators to `paused` and `cancelled` (see `lifecycle.py`).
CAMPAIGN_STATUSES = ("draft", "asset_generated", "ready_to_launch", "paused", "cancelled", "failed")

campaigns = sa.Table(
    "campaigns",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("organization_id", sa.String(36), nullable=False),
    sa.Column("name", sa.Text, nullable=False, server_default=""),
    sa.Column("status", sa.String(32), nullable=False, server_default="draft"),
    sa.Column("message_type", sa.String(16), nullable=False),
    # WhatsApp's template category (`categories.CATEGORIES`); NULL is treated as marketing.
    sa.Column("category", sa.String(16)),
    sa.Column("template_name", sa.Text),
    sa.Column("template_language", sa.Text),
    sa.Column("template_parameters", sa.JSON(none_as_null=True)),
    sa.Column("message_content", sa.Text),
    sa.Column("media_url", sa.Text),
    sa.Column("caption", sa.Text),
    sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    sa.Column(
        "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    # Bumped by every status change this pipeline makes: the sensor's run key includes it, so a
    # campaign reset to asset_generated after processing gets a new run.
    sa.Column("version", sa.Integer, nullable=False, server_default="0"),
    sa.Column("queued_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("failed_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("pending_count", sa.Integer, nullable=False, server_default="0"),
    # The last failure of a run of this campaign (one line, phone numbers masked), when and which
    # run; cleared when a run leaves nothing pending.
    sa.Column("last_error", sa.Text),
    sa.Column("last_error_at", sa.DateTime(timezone=True)),
    sa.Column("last_error_run_id", sa.String(64)),
    sa.Column("last_run_id", sa.String(64)),
    # Resume runs the recovery sensor started since a run last left nothing pending.
    sa.Column("resume_attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("processed_at", sa.DateTime(timezone=True)),
    # The run that may send for this campaign, until when: two runs never send at once.
    sa.Column("lease_run_id", sa.String(64)),
    sa.Column("lease_expires_at", sa.DateTime(timezone=True)),
    # Not started before this time (NULL: as soon as it reaches asset_generated).
    sa.Column("send_at", sa.DateTime(timezone=True)),
    # Who paused, resumed or cancelled the campaign last, and when ("alice@host (cli)", say).
    sa.Column("paused_at", sa.DateTime(timezone=True)),
    sa.Column("paused_by", sa.Text),
    sa.Column("cancelled_at", sa.DateTime(timezone=True)),
    sa.Column("cancelled_by", sa.Text),
    # Set by `resume` to ready_to_launch, cleared by the claim: the processing sensor starts it.
    sa.Column("resumed_at", sa.DateTime(timezone=True)),
    sa.Column("resumed_by", sa.Text),
    # How fast the campaign may be queued, in messages per second, all its send steps together
    # (NULL: CAMPAIGN_MAX_MESSAGES_PER_SECOND, else no cap). Read when a run claims it.
    sa.Column("max_messages_per_second", sa.Float),
    # `resume --accept-invalid`: the preflight guard no longer holds the campaign back.
    sa.Column("invalid_accepted_at", sa.DateTime(timezone=True)),
    sa.Index("ix_campaigns_status_updated_at", "status", "updated_at"),
    # The processing sensor's unscheduled waiting campaigns, oldest first, without reading the
    # scheduled ones.
    sa.Index(
        "ix_campaigns_waiting_updated_at",
        "updated_at",
        "id",
        postgresql_where=sa.text("status = 'asset_generated' AND send_at IS NULL"),
        sqlite_where=sa.text("status = 'asset_generated' AND send_at IS NULL"),
    ),
    # The processing sensor's next scheduled campaign.
    sa.Index("ix_campaigns_status_send_at", "status", "send_at"),
    # Campaigns `resume` handed back to the processing sensor: few, and found without a scan.
    sa.Index("ix_campaigns_resumed_at", "resumed_at"),
)

campaign_audience = sa.Table(
    "campaign_audience",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("campaign_id", sa.String(36), sa.ForeignKey("campaigns.id"), nullable=False),
    sa.Column("phone_number", sa.Text),
    sa.Column("name", sa.Text),
    sa.Column("attributes", sa.JSON(none_as_null=True)),
    sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("failure_reason", sa.Text),
    # Set with every `failed` status from failure codes on (`failure_codes.FailureCode`).
    sa.Column("failure_code", sa.String(32)),
    sa.Column("sqs_message_id", sa.String(100)),
    sa.Column(
        "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    # (campaign_id, status) for counts and pending scans; id last for keyset pagination.
    sa.Index("ix_campaign_audience_campaign_status_id", "campaign_id", "status", "id"),
    # A campaign's recipients by number: who else has a chunk's numbers (duplicates).
    sa.Index("ix_campaign_audience_campaign_phone_id", "campaign_id", "phone_number", "id"),
)

# Numbers an organization must not message (opted out): `marketing` holds for marketing
# campaigns, `all` for every one (see `store.suppressions`).
suppressions = sa.Table(
    "suppressions",
    metadata,
    sa.Column("organization_id", sa.String(36), primary_key=True),
    sa.Column("phone_number", sa.Text, primary_key=True),
    sa.Column("scope", sa.String(16), nullable=False, server_default="marketing"),
    sa.Column("reason", sa.Text),
    # Who added it: "cli alice@host", "api #2", "import optouts.csv", ...
    sa.Column("source", sa.Text),
    sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    ),
    # What a send has not seen yet: the organization's suppressions since its last look.
    sa.Index("ix_suppressions_organization_created_at", "organization_id", "created_at"),
)

# An organization's own settings (NULL: the default). `frequency_cap` is `N/DURATION` or `off`
# (`frequency_caps`). `marketing_sends` holds every marketing message the organization queued
# since `marketing_counted_since`, at least the newest `marketing_counted_messages` per number
# (NULL: not known to, so a capped send counts them from the audience first).
organizations = sa.Table(
    "organizations",
    metadata,
    sa.Column("organization_id", sa.String(36), primary_key=True),
    sa.Column("frequency_cap", sa.String(32)),
    sa.Column("marketing_counted_since", sa.DateTime(timezone=True)),
    sa.Column("marketing_counted_messages", sa.Integer),
)

# The frequency cap's memory: for each organization and number, when its recent marketing
# messages were queued (oldest first) and by which campaigns, as parallel arrays. On PostgreSQL
# a campaign is its key, `hashtextextended(id, 0)` (8 bytes, not 36); on SQLite, JSON lists of
# epoch seconds and ids. One row per number, so a reservation locks it (`store.marketing_sends`).
marketing_sends = sa.Table(
    "marketing_sends",
    metadata,
    sa.Column("organization_id", sa.String(36), primary_key=True),
    sa.Column("phone_number", sa.Text, primary_key=True),
    sa.Column(
        "sent_at",
        postgresql.ARRAY(sa.DateTime(timezone=True)).with_variant(sa.JSON(), "sqlite"),
        nullable=False,
    ),
    sa.Column(
        "campaign_keys",
        postgresql.ARRAY(sa.BigInteger).with_variant(sa.JSON(), "sqlite"),
        nullable=False,
    ),
    # Every reservation rewrites its number's row at the same size (its entries are trimmed):
    # room left on each page lets PostgreSQL do that in place (a HOT update, the index
    # untouched), which also keeps the write-ahead log small.
    postgresql_with={"fillfactor": 90},
)


def create_schema(engine: sa.Engine) -> None:
    """Create the tables and indexes that do not exist yet, and columns added since."""
    metadata.create_all(engine)
    # create_all leaves existing tables alone. Columns added to the schema later are all
    # nullable or have a server default, so ADD COLUMN (and CREATE INDEX for their indexes)
    # upgrades a database in place. Names and types come from this module, never from input.
    with engine.begin() as connection:
        inspector = sa.inspect(connection)
        for table in metadata.sorted_tables:
            present = {column["name"] for column in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in present:
                    definition = sa.schema.CreateColumn(column).compile(connection)
                    connection.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {definition}")
            for index in table.indexes:
                index.create(connection, checkfirst=True)
