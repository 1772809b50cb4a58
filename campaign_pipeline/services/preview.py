"""Preview a campaign: build every pending recipient's payload as a run would, and send nothing.

The same code path as a run: the campaign's message read from its row as the claim reads it,
pending recipients streamed with `CampaignStore.iter_pending_recipients` in the run's chunks,
and `build_payloads` with the queue's `MaximumMessageSize`, then the skips a run would decide
(the frequency cap asked, not reserved). Nothing is sent or reserved; the one write is the
cap's memory of the organization's recent marketing messages, filled from the audience as a
run would first fill it. SQS is asked only for that size, and when it is not configured 1 MiB
(its default) is assumed.

`build_preview` counts (memory bounded by one chunk and the sample) for the `preview_campaign`
job and, through `preview_report`, for the `preview` command and the HTTP API's
`GET /api/campaigns/{id}/preview`: `--json` and the API answer with one document,
`PreviewReport.as_dict`. `preview_frame` and `preview` give one row per recipient, as Polars
and as pandas, for notebooks. This module is `campaign_pipeline.preview`'s home; it lives in
`services`, so importing it never hides that function.
"""

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import botocore.exceptions
import polars as pl

from campaign_pipeline.errors import (
    CampaignDefinitionError,
    CampaignNotFound,
    InvalidCampaignId,
    PreviewError,
)
from campaign_pipeline.failure_codes import SKIP_ORDER, FailureCode
from campaign_pipeline.lifecycle import refusal
from campaign_pipeline.payloads import CampaignMessage, build_payloads, check_campaign_message
from campaign_pipeline.privacy import mask_phone_numbers, masked_phone_number
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import SqsQueue
from campaign_pipeline.sending.frequency import frequency_cap_for
from campaign_pipeline.sending.skips import apply_skips, skip_frequency_capped
from campaign_pipeline.services.sqs_health import (
    CHECK_CONNECT_TIMEOUT_SECONDS,
    CHECK_MAX_ATTEMPTS,
    CHECK_READ_TIMEOUT_SECONDS,
    QUEUE_URL_VARIABLE,
    REGION_VARIABLE,
    error_reason,
)
from campaign_pipeline.settings import campaign_frequency_cap
from campaign_pipeline.store.records import campaign_message
from campaign_pipeline.text import canonical_campaign_id, one_line

if TYPE_CHECKING:
    import pandas as pd

# SQS's default MaximumMessageSize, and its largest: what a queue not yet configured allows.
ASSUMED_MAX_MESSAGE_BYTES = 1_048_576
ASSUMED_SOURCE = "assumed (SQS not configured)"
DEFAULT_SAMPLE_SIZE = 5
# A run's default `recipients_per_chunk` (CampaignConfig): the preview reads the same chunks.
RECIPIENTS_PER_CHUNK = 50_000
FRAME_COLUMNS = ("campaign_audience_id", "to", "payload", "failure_reason", "failure_code")
# The skips `preview --json` counts under `skipped`, beside the invalid ones.
SKIPPED_CODES = tuple(code.value for code in SKIP_ORDER if code != FailureCode.INVALID)


@dataclass(frozen=True)
class QueueLimit:
    """The largest payload the queue takes, and where that figure comes from."""

    max_message_bytes: int
    source: str
    # The variables that would configure SQS, when the figure is assumed.
    missing: tuple[str, ...] = ()

    @property
    def assumed(self) -> bool:
        """SQS is not configured: the figure is SQS's default, not the queue's."""
        return bool(self.missing)


def queue_limit_from_environment() -> QueueLimit:
    """`MaximumMessageSize` of the queue AWS_SQS_QUEUE_URL and AWS_REGION name, else 1 MiB.

    One GetQueueAttributes call for that attribute alone, by a client that gives up within
    seconds (the SQS status check's budget).

    Raises:
        PreviewError: SQS is configured but the queue cannot be read (one line on why).
    """
    queue_url = os.environ.get(QUEUE_URL_VARIABLE, "").strip()
    region = os.environ.get(REGION_VARIABLE, "").strip()
    missing = tuple(
        name
        for name, value in ((QUEUE_URL_VARIABLE, queue_url), (REGION_VARIABLE, region))
        if not value
    )
    if missing:
        return QueueLimit(ASSUMED_MAX_MESSAGE_BYTES, ASSUMED_SOURCE, missing)
    queue = SqsQueue(queue_url=queue_url, region_name=region)
    try:
        endpoint = queue.resolved_endpoint_url
    except ValueError as error:  # botocore rejects a malformed endpoint override here
        raise PreviewError(f"the SQS endpoint is not usable: {one_line(error)}") from None
    try:
        attributes = queue.check_attributes(
            ["MaximumMessageSize"],
            max_attempts=CHECK_MAX_ATTEMPTS,
            connect_timeout_seconds=CHECK_CONNECT_TIMEOUT_SECONDS,
            read_timeout_seconds=CHECK_READ_TIMEOUT_SECONDS,
        )
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
        raise PreviewError(
            f"cannot read the maximum message size of queue {queue_url}: "
            f"{error_reason(error, endpoint)}"
        ) from None
    if "MaximumMessageSize" not in attributes:
        raise PreviewError(f"queue {queue_url} answered without MaximumMessageSize; is it SQS?")
    return QueueLimit(int(attributes["MaximumMessageSize"]), f"MaximumMessageSize of {queue_url}")


@dataclass(frozen=True)
class PreviewCampaign:
    """A campaign that can be previewed: its message as a run builds it, its name and status."""

    message: CampaignMessage
    name: str
    status: str

    @property
    def id(self) -> str:
        """The campaign's id."""
        return self.message.campaign_id


def load_campaign(store: CampaignStore, campaign_id: str) -> PreviewCampaign:
    """The campaign, if it exists, is not cancelled and its definition can be sent.

    Any other status may be previewed (paused, draft, scheduled for later, finished): a
    preview changes nothing. A cancelled campaign is refused as `lifecycle.refusal` says.

    Raises:
        InvalidCampaignId: the id is not a UUID.
        CampaignNotFound: no campaign has that id.
        CampaignStopped: the campaign is cancelled; nothing ever sends it again.
        CampaignDefinitionError: no recipient of it could ever be sent (its definition's
            problem, in one line).
    """
    try:
        campaign_id = canonical_campaign_id(campaign_id)
    except ValueError as error:
        raise InvalidCampaignId(str(error)) from None
    row = store.campaigns.get(campaign_id)
    if row is None:
        raise CampaignNotFound(f"campaign {campaign_id} does not exist")
    if row["status"] == "cancelled" and (refused := refusal(row)) is not None:
        raise refused
    try:
        message = campaign_message(row)
        check_campaign_message(message)
    except CampaignDefinitionError as error:
        raise CampaignDefinitionError(f"campaign {campaign_id} cannot be sent: {error}") from None
    return PreviewCampaign(message=message, name=row["name"], status=row["status"])


def _built_chunks(
    store: CampaignStore, campaign: PreviewCampaign, max_message_bytes: int, chunk_size: int
) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
    """Each chunk of pending recipients with its payloads and skips, as a run would decide."""
    message = campaign.message
    cap = frequency_cap_for(store.organizations, message, campaign_frequency_cap())
    if cap is not None:
        store.marketing_sends.count_history(message.organization_id, cap)
    for chunk in store.audience.pending_chunks(campaign.id, chunk_size):
        built = build_payloads(message, chunk, max_message_bytes)
        skipped = apply_skips(
            store.audience, store.suppressions, message, built, chunk["phone_number"]
        )
        if cap is not None:
            numbers = skipped.filter(pl.col("failure_code").is_null())["phone_number"]
            capped = store.marketing_sends.over_cap(
                message.organization_id, message.campaign_id, cap, numbers.to_list()
            )
            skipped = skip_frequency_capped(skipped, capped, cap)
        yield chunk, skipped


@dataclass
class PreviewReport:
    """What a run would make of the campaign's pending recipients, counted.

    `valid` counts the recipients a run would queue; `sample` holds the first of their
    payloads, exactly the bodies a run would queue. `skipped` counts the valid recipients a
    run would not queue, by failure code.
    """

    campaign_id: str
    name: str
    message_type: str
    status: str
    max_message_bytes: int
    max_message_bytes_source: str
    recipients: int = 0
    valid: int = 0
    invalid_by_reason: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    sample: list[str] = field(default_factory=list)

    @property
    def invalid(self) -> int:
        """Recipients a run would mark failed before sending."""
        return sum(self.invalid_by_reason.values())

    def reasons(self) -> list[tuple[str, int]]:
        """The invalid recipients' reasons with their counts, the most common first."""
        return sorted(self.invalid_by_reason.items(), key=lambda item: (-item[1], item[0]))

    def as_dict(self) -> dict[str, Any]:
        """The `preview --json` document (the API's too); the sample as payload objects, as sent."""
        return {
            "campaign_id": self.campaign_id,
            "name": self.name,
            "message_type": self.message_type,
            "status": self.status,
            "recipients": self.recipients,
            "valid": self.valid,
            "invalid": dict(self.reasons()),
            "skipped": {code: self.skipped[code] for code in SKIPPED_CODES},
            "max_message_bytes": self.max_message_bytes,
            "max_message_bytes_source": self.max_message_bytes_source,
            "sample": [json.loads(payload) for payload in self.sample],
        }


def build_preview(
    store: CampaignStore,
    campaign: PreviewCampaign,
    queue_limit: QueueLimit,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
    recipients_per_chunk: int = RECIPIENTS_PER_CHUNK,
) -> PreviewReport:
    """Count the campaign's pending recipients, valid and invalid by reason; keep a sample.

    Memory holds one chunk and `sample_size` payloads, however large the audience.
    """
    report = PreviewReport(
        campaign_id=campaign.id,
        name=campaign.name,
        message_type=campaign.message.message_type,
        status=campaign.status,
        max_message_bytes=queue_limit.max_message_bytes,
        max_message_bytes_source=queue_limit.source,
    )
    for _, built in _built_chunks(
        store, campaign, queue_limit.max_message_bytes, recipients_per_chunk
    ):
        invalid = built.filter(pl.col("failure_code") == FailureCode.INVALID.value)
        for reason, count in invalid.group_by("failure_reason").len().iter_rows():
            report.invalid_by_reason[reason] += count
        skipped = built.filter(pl.col("failure_code") != FailureCode.INVALID.value)
        report.skipped.update(dict(skipped.group_by("failure_code").len().iter_rows()))
        valid = built.filter(pl.col("failure_code").is_null())
        report.recipients += built.height
        report.valid += valid.height
        wanted = sample_size - len(report.sample)
        if wanted > 0:
            report.sample += valid["payload"].head(wanted).to_list()
    return report


def preview_report(
    store: CampaignStore, campaign_id: str, sample_size: int = DEFAULT_SAMPLE_SIZE
) -> tuple[QueueLimit, PreviewReport]:
    """The `preview` command's and `GET .../preview`'s report, and the queue limit it used.

    Raises:
        CampaignPipelineError: the campaign cannot be previewed (`load_campaign` says why), or
            SQS is configured and unreadable (`PreviewError`).
    """
    campaign = load_campaign(store, campaign_id)
    queue_limit = queue_limit_from_environment()
    return queue_limit, build_preview(store, campaign, queue_limit, sample_size)


def format_preview(report: PreviewReport) -> list[str]:
    """The report as `label  value` lines for a person; the sample's phone numbers masked."""
    lines = [
        f"campaign    {report.campaign_id} {report.name!r} ({report.message_type})",
        f"status      {report.status}",
        f"recipients  {report.recipients} pending: {report.valid} valid, {report.invalid} invalid"
        + (f", {sum(report.skipped.values())} skipped" if report.skipped else ""),
    ]
    reasons = report.reasons()
    width = len(str(reasons[0][1])) if reasons else 0
    for index, (reason, count) in enumerate(reasons):
        label = "invalid" if index == 0 else ""
        # Reasons never hold a phone number, and masking would garble their sizes in bytes.
        lines.append(f"{label:<10}  {count:>{width}}  {reason}")
    if report.skipped:
        counts = ", ".join(f"{report.skipped[code]} {code}" for code in SKIPPED_CODES)
        lines.append(f"skipped     {counts}")
    lines.append(
        f"max size    {report.max_message_bytes:,} bytes, {report.max_message_bytes_source}"
    )
    if not report.sample:
        shown = "none: no valid payload" if not report.valid else "none asked for (--limit 0)"
        lines.append(f"sample      {shown}")
        return lines
    lines.append(
        f"sample      the first {len(report.sample)} of {report.valid} valid payloads, "
        "phone numbers masked:"
    )
    lines += [f"  {mask_phone_numbers(payload)}" for payload in report.sample]
    return lines


def preview_frame(
    store: CampaignStore,
    campaign: PreviewCampaign,
    queue_limit: QueueLimit,
    limit: int | None = None,
    recipients_per_chunk: int = RECIPIENTS_PER_CHUNK,
) -> pl.DataFrame:
    """One row per pending recipient (the first `limit`, by id): id, masked `to`, payload, why not.

    `payload` is the JSON text a run would queue (its `to` unmasked: it is the message), null
    for a recipient a run would fail, whose `failure_reason` says why and `failure_code` is
    `invalid`, `duplicate`, ... All five columns are strings.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be at least 0, not {limit}")
    frames: list[pl.DataFrame] = []
    rows = 0
    # Each payload depends on its own recipient alone: smaller chunks build the same payloads.
    chunk_size = recipients_per_chunk if limit is None else min(limit, recipients_per_chunk)
    if limit != 0:
        for chunk, built in _built_chunks(
            store, campaign, queue_limit.max_message_bytes, chunk_size
        ):
            # Same rows in the same order: build_payloads selects from the chunk, never filters.
            frame = built.with_columns(chunk["phone_number"]).select(
                pl.col("id").alias("campaign_audience_id"),
                masked_phone_number(pl.col("phone_number")).alias("to"),
                "payload",
                "failure_reason",
                "failure_code",
            )
            if limit is not None:
                frame = frame.head(limit - rows)
            frames.append(frame)
            rows += frame.height
            if limit is not None and rows >= limit:
                break
    if not frames:
        return pl.DataFrame(schema=dict.fromkeys(FRAME_COLUMNS, pl.String))
    return pl.concat(frames)


def to_pandas(frame: pl.DataFrame) -> "pd.DataFrame":
    """The preview frame as pandas through Arrow, string columns as pandas `string` (pd.NA)."""
    import pandas as pd
    import pyarrow as pa

    def string_dtype(arrow_type: pa.DataType) -> pd.StringDtype | None:
        text = pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
        return pd.StringDtype() if text or pa.types.is_string_view(arrow_type) else None

    return frame.to_pandas(types_mapper=string_dtype)


def preview(
    campaign_id: str, limit: int | None = None, *, database_url: str | None = None
) -> "pd.DataFrame":
    """The campaign's pending recipients with the payloads a run would queue, as pandas.

    One row per pending recipient, by id (the first `limit` of them; all when None), with
    the columns `campaign_audience_id`, `to` (masked: `***67`), `payload` (the JSON text a
    run would queue, or null), `failure_reason` and `failure_code` (null when it would be
    queued; else why not, and `invalid`, `duplicate`, ...), each of dtype `string`.
    Nothing is written, nothing is sent; the queue's size limit is read as `preview` reads it.

    Args:
        campaign_id: UUID of the campaign; any status but `cancelled`.
        limit: most rows to return.
        database_url: the campaign database; default CAMPAIGN_DATABASE_URL, as for runs.

    Raises:
        CampaignPipelineError: the campaign cannot be previewed (`load_campaign` says why), or
            SQS is configured and unreadable (`PreviewError`).
    """
    store = CampaignStore(database_url=database_url)
    try:
        campaign = load_campaign(store, campaign_id)
        frame = preview_frame(store, campaign, queue_limit_from_environment(), limit)
    finally:
        store.engine.dispose()
    return to_pandas(frame)
