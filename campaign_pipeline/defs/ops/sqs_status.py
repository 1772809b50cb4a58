"""The op that records the queue's status, so its depth can be followed run after run."""

from typing import Any

import dagster as dg

from campaign_pipeline.resources.sqs_queue import SqsQueue
from campaign_pipeline.services.sqs_health import SqsStatus, probe_sqs_status

# The queue as an external asset: its observations chart the depth over time in the UI.
SQS_QUEUE_ASSET = dg.AssetKey("sqs_queue")

# Attribute fields recorded as integers, under the same names as in `SqsStatus.as_dict()`.
COUNT_FIELDS = (
    "visible_messages",
    "in_flight_messages",
    "delayed_messages",
    "maximum_message_size_bytes",
    "message_retention_seconds",
    "visibility_timeout_seconds",
)


def status_metadata(status: SqsStatus) -> dict[str, dg.MetadataValue]:
    """The status as run metadata: the configuration, the counts as ints, the whole as JSON."""
    metadata: dict[str, dg.MetadataValue] = {
        "configured": dg.MetadataValue.bool(status.configured),
        "reachable": dg.MetadataValue.bool(status.reachable),
        "queue_url": dg.MetadataValue.text(status.queue_url or "-"),
        "region": dg.MetadataValue.text(status.region or "-"),
        "endpoint_url": dg.MetadataValue.text(status.endpoint_url or "-"),
        "fifo": dg.MetadataValue.bool(status.fifo),
        "message_group_id": dg.MetadataValue.text(status.message_group_id or "-"),
    }
    for name in COUNT_FIELDS:
        value = getattr(status, name)
        if value is not None:
            metadata[name] = dg.MetadataValue.int(value)
    if status.reachable:
        metadata["dead_letter_target_arn"] = dg.MetadataValue.text(
            status.dead_letter_target_arn or "none (no redrive policy)"
        )
        if status.max_receive_count is not None:
            metadata["max_receive_count"] = dg.MetadataValue.int(status.max_receive_count)
    if status.error:
        metadata["error"] = dg.MetadataValue.text(status.error)
    metadata["status"] = dg.MetadataValue.json(status.as_dict())
    return metadata


@dg.op(description="Record whether the SQS queue answers, and its depth and settings.")
def record_sqs_status(
    context: dg.OpExecutionContext, sqs_queue: SqsQueue
) -> dg.Output[dict[str, Any]]:
    """Record whether the SQS queue answers, and its depth and settings."""
    status = probe_sqs_status(sqs_queue)
    metadata = status_metadata(status)
    if not status.reachable:
        # Retrying at once would not help; the schedule checks again at its next tick.
        raise dg.Failure(description=status.error, metadata=metadata, allow_retries=False)
    # An observation of the queue as an asset: the UI plots its numbers run after run.
    context.log_event(
        dg.AssetObservation(
            asset_key=SQS_QUEUE_ASSET,
            metadata={name: metadata[name] for name in COUNT_FIELDS if name in metadata},
        )
    )
    context.log.info(
        f"{status.queue_url}: {status.visible_messages} visible, "
        f"{status.in_flight_messages} in flight, {status.delayed_messages} delayed"
    )
    return dg.Output(status.as_dict(), metadata=metadata)
