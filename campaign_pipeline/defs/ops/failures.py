"""Domain errors as Dagster sees them, and the send's numbers as a person reads them in the UI."""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import sqlalchemy as sa

from campaign_pipeline.errors import CampaignHeldBack, CampaignPipelineError, SendInterrupted
from campaign_pipeline.sending.stats import SendStats

# A dropped database connection is worth another try; anything else about the database is not.
TRANSIENT_DATABASE_ERRORS = (sa.exc.OperationalError, sa.exc.InterfaceError)


@contextmanager
def as_dagster_failures(queue_url: str = "", retry_transient: bool = True) -> Iterator[None]:
    """Turn the pipeline's errors into `dg.Failure` (one line), a dropped connection into a retry.

    A send that stopped early may be retried (its recipients stay pending); a campaign in the
    wrong state, a bad setting or a guard's hold-back may not. With `retry_transient` off (a
    send step, whose lease a retry would not hold), database errors fail the step as they are.
    """
    try:
        yield
    except SendInterrupted as error:
        raise dg.Failure(
            description=f"{error}. Recipients without an outcome stay pending for a rerun.",
            metadata=send_metadata(error.stats, queue_url),
        ) from None
    except CampaignHeldBack as error:
        raise dg.Failure(
            description=str(error),
            metadata=send_metadata(error.stats, queue_url) if error.stats else None,
            allow_retries=False,
        ) from None
    except CampaignPipelineError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None
    except TRANSIENT_DATABASE_ERRORS as error:
        if not retry_transient:
            raise
        raise dg.RetryRequested(max_retries=3, seconds_to_wait=2) from error


def reasons_table(stats: SendStats) -> dg.MetadataValue:
    """The top failure reasons as a markdown table (reasons never hold a phone number)."""
    reasons = "\n".join(
        f"| {reason.replace('|', '/')} | {count} |"
        for reason, count in stats.failed_by_reason.most_common(20)
    )
    return dg.MetadataValue.md(
        f"| reason | recipients |\n|---|---|\n{reasons}" if reasons else "none"
    )


def codes_metadata(stats: SendStats) -> dg.MetadataValue:
    """Failed recipients by failure code (invalid, duplicate, ...), as JSON."""
    return dg.MetadataValue.json(dict(sorted(stats.failed_by_code.items())))


def send_metadata(stats: SendStats, queue_url: str) -> dict[str, dg.MetadataValue]:
    """A send step's counts, rate and queue, for its output or its failure."""
    return {
        "recipients": dg.MetadataValue.int(stats.recipients),
        "queued": dg.MetadataValue.int(stats.queued),
        "failed": dg.MetadataValue.int(stats.failed),
        "failed_by_reason": reasons_table(stats),
        "failed_by_code": codes_metadata(stats),
        "batches": dg.MetadataValue.int(stats.batches),
        "retried_entries": dg.MetadataValue.int(stats.retried_entries),
        "duration_s": dg.MetadataValue.float(round(stats.seconds, 3)),
        "messages_per_s": dg.MetadataValue.float(round(stats.messages_per_second, 1)),
        "queue": dg.MetadataValue.url(queue_url),
    }
