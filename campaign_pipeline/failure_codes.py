"""Why a recipient ended `failed`, as a code a program can count (`failure_reason` is the text).

Skips are decided before anything is queued; when several apply to one recipient, the first in
`SKIP_ORDER` is the one recorded. `sqs_rejected` is SQS refusing the entry for good.
"""

from enum import StrEnum


class FailureCode(StrEnum):
    """`campaign_audience.failure_code` of a `failed` recipient."""

    INVALID = "invalid"
    DUPLICATE = "duplicate"
    OPTED_OUT = "opted_out"
    FREQUENCY_CAPPED = "frequency_capped"
    SQS_REJECTED = "sqs_rejected"


SKIP_ORDER = (
    FailureCode.INVALID,
    FailureCode.DUPLICATE,
    FailureCode.OPTED_OUT,
    FailureCode.FREQUENCY_CAPPED,
)
"""The skips, in the order that decides which one a recipient is recorded with."""
