"""The op that previews a campaign: its run's metadata is the preview, one click in the launchpad.

It takes no `sqs_queue` resource: the code location's resolves AWS_SQS_QUEUE_URL and AWS_REGION
through `dg.EnvVar`, which fails the run's config when they are unset, and a preview must work
without SQS. It reads the same two variables at run time instead, and only when both are set
asks the queue for its maximum message size.
"""

import re
from typing import Any

import dagster as dg
from pydantic import Field

from campaign_pipeline.defs.ops.failures import as_dagster_failures
from campaign_pipeline.privacy import mask_phone_numbers
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.services.preview import (
    DEFAULT_SAMPLE_SIZE,
    PreviewReport,
    build_preview,
    load_campaign,
    queue_limit_from_environment,
)


class PreviewConfig(dg.Config):
    """Which campaign to preview, and how many of its payloads to show."""

    campaign_id: str = Field(
        description="UUID of the campaign to preview (any status but cancelled)."
    )
    limit: int = Field(
        default=DEFAULT_SAMPLE_SIZE, ge=0, description="Valid payloads shown in the sample."
    )


def _cell(text: str) -> str:
    """Text for a markdown table cell: pipes escaped."""
    return text.replace("|", "\\|")


def _reasons_table(report: PreviewReport) -> dg.MetadataValue:
    """The reasons, unmasked: they never hold a phone number, and they hold sizes in bytes."""
    rows = "\n".join(f"| {_cell(reason)} | {count} |" for reason, count in report.reasons())
    return dg.MetadataValue.md(f"| reason | recipients |\n|---|---|\n{rows}" if rows else "none")


def _code(text: str) -> str:
    """`text` as a markdown code span (so `***67` is not emphasis), whatever backticks it holds."""
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}"


def _sample_table(report: PreviewReport) -> dg.MetadataValue:
    """The sample payloads, their phone numbers masked: metadata shows in the UI and logs."""
    rows = "\n".join(
        f"| {index} | {_code(_cell(mask_phone_numbers(payload)))} |"
        for index, payload in enumerate(report.sample, 1)
    )
    return dg.MetadataValue.md(f"| # | payload |\n|---|---|\n{rows}" if rows else "none")


def preview_metadata(report: PreviewReport) -> dict[str, dg.MetadataValue]:
    """The counts, the invalid reasons and the sample as run metadata, phone numbers masked."""
    return {
        "campaign_id": dg.MetadataValue.text(report.campaign_id),
        "campaign_name": dg.MetadataValue.text(report.name),
        "message_type": dg.MetadataValue.text(report.message_type),
        "status": dg.MetadataValue.text(report.status),
        "recipients": dg.MetadataValue.int(report.recipients),
        "valid": dg.MetadataValue.int(report.valid),
        "invalid": dg.MetadataValue.int(report.invalid),
        "invalid_by_reason": _reasons_table(report),
        "skipped": dg.MetadataValue.json(report.as_dict()["skipped"]),
        "max_message_bytes": dg.MetadataValue.int(report.max_message_bytes),
        "max_message_bytes_source": dg.MetadataValue.text(report.max_message_bytes_source),
        "sample": _sample_table(report),
    }


@dg.op(description="Build every pending recipient's payload as a run would; send nothing.")
def preview_campaign_payloads(
    context: dg.OpExecutionContext, config: PreviewConfig, campaign_store: CampaignStore
) -> dg.Output[dict[str, Any]]:
    """Build every pending recipient's payload as a run would; send nothing."""
    with as_dagster_failures():
        campaign = load_campaign(campaign_store, config.campaign_id)
        queue_limit = queue_limit_from_environment()
        report = build_preview(campaign_store, campaign, queue_limit, config.limit)
    if queue_limit.assumed:
        context.log.info(
            f"SQS is not configured (set {' and '.join(queue_limit.missing)}): assuming a "
            f"maximum message size of {queue_limit.max_message_bytes:,} bytes"
        )
    context.log.info(
        f"Campaign {report.campaign_id}: {report.recipients} pending recipients, "
        f"{report.valid} valid, {report.invalid} invalid, {sum(report.skipped.values())} skipped"
    )
    # The counts only: the output is stored by the IO manager, and payloads hold phone numbers.
    counts = {
        "recipients": report.recipients,
        "valid": report.valid,
        "invalid": dict(report.reasons()),
        "skipped": report.as_dict()["skipped"],
    }
    return dg.Output(counts, metadata=preview_metadata(report))
