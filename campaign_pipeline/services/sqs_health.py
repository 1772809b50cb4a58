"""Whether SQS is configured and answers, and what the queue holds (the spec's sqs-status).

One GetQueueAttributes call with a client that gives up within seconds; any error becomes a
one-line reason. Credentials are never read here: boto3 finds them itself. `SqsStatus.as_dict()`
is the one document: `sqs-status --json` prints it, `GET /api/campaigns/sqs-status` answers
with it, the `check_sqs_status` job records it.
"""

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import botocore.exceptions

from campaign_pipeline.resources.sqs_queue import SqsQueue
from campaign_pipeline.sqs import GROUP_ID_VARIABLE
from campaign_pipeline.text import one_line

QUEUE_URL_VARIABLE = "AWS_SQS_QUEUE_URL"
REGION_VARIABLE = "AWS_REGION"
ENDPOINT_VARIABLE = "AWS_ENDPOINT_URL_SQS"
ATTRIBUTE_NAMES = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "VisibilityTimeout",
    "RedrivePolicy",
)
# A check should answer within seconds, even when nothing listens at the endpoint.
CHECK_MAX_ATTEMPTS = 2
CHECK_CONNECT_TIMEOUT_SECONDS = 2.0
CHECK_READ_TIMEOUT_SECONDS = 5.0
NO_CREDENTIALS = (
    "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
)


@dataclass(frozen=True)
class SqsStatus:
    """What one check found: the configuration, whether the queue answered, its attributes.

    The attributes are None when the queue did not answer; `error` then says why in one line.
    """

    configured: bool
    reachable: bool
    queue_url: str | None
    region: str | None
    endpoint_url: str | None
    fifo: bool
    message_group_id: str | None
    visible_messages: int | None = None
    in_flight_messages: int | None = None
    delayed_messages: int | None = None
    maximum_message_size_bytes: int | None = None
    message_retention_seconds: int | None = None
    visibility_timeout_seconds: int | None = None
    dead_letter_target_arn: str | None = None
    max_receive_count: int | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The status as JSON-ready values, every field present (None for unknown)."""
        return asdict(self)

    def format_table(self) -> str:
        """The status as aligned `label  value` lines for a person."""
        rows = [
            ("configured", _yes_no(self.configured)),
            ("queue URL", self.queue_url or "-"),
            ("region", self.region or "-"),
            ("endpoint", self.endpoint_url or "-"),
            ("FIFO", _yes_no(self.fifo) if self.queue_url else "-"),
            ("message group id", self._group_text()),
            ("reachable", _yes_no(self.reachable)),
        ]
        if self.reachable:
            rows += [
                ("visible messages", _count(self.visible_messages)),
                ("in-flight messages", _count(self.in_flight_messages)),
                ("delayed messages", _count(self.delayed_messages)),
                ("max message size", _size(self.maximum_message_size_bytes)),
                ("retention", _duration(self.message_retention_seconds)),
                ("visibility timeout", _duration(self.visibility_timeout_seconds)),
                ("dead-letter queue", self._dead_letter_text()),
            ]
        if self.error:
            rows.append(("error", self.error))
        width = max(len(label) for label, _ in rows)
        return "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)

    def _group_text(self) -> str:
        if not self.queue_url:
            return "-"
        if not self.fifo:
            return "- (standard queue)"
        return self.message_group_id or "- (each campaign is its own group)"

    def _dead_letter_text(self) -> str:
        if self.dead_letter_target_arn is None:
            return "none (no redrive policy)"
        if self.max_receive_count is None:
            return self.dead_letter_target_arn
        return f"{self.dead_letter_target_arn} (after {self.max_receive_count} receives)"


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def _count(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def _size(value: int | None) -> str:
    if value is None:
        return "?"
    return f"{value:,} bytes ({value / 1024:g} KiB)"


def _duration(seconds: int | None) -> str:
    if seconds is None:
        return "?"
    for unit, length in (("days", 86_400), ("hours", 3_600), ("minutes", 60)):
        if seconds >= length:
            return f"{seconds:,} s ({seconds / length:.3g} {unit})"
    return f"{seconds} s"


def _os_reason(error: BaseException) -> str | None:
    """The operating system's words for a failed connection (`connection refused`), if any."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror[:1].lower() + current.strerror[1:]
        wrapped = getattr(current, "kwargs", {}).get("error")
        pending += [wrapped, current.__cause__, current.__context__]
    return None


def error_reason(error: Exception, endpoint: str) -> str:
    """One line on why SQS at `endpoint` did not answer a call, without a traceback."""
    if isinstance(error, botocore.exceptions.ClientError):
        details = error.response.get("Error", {})
        status = str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?"))
        code = details.get("Code") or "Unknown"
        message = one_line(details.get("Message") or "")
        if code == status:  # not an SQS error: some other server answered
            return f"{endpoint} answered HTTP {status}" + (f": {message}" if message else "")
        return f"{code}: {message or f'HTTP {status} without a message'}"
    if isinstance(error, botocore.exceptions.NoCredentialsError):
        return NO_CREDENTIALS
    if isinstance(error, botocore.exceptions.ConnectTimeoutError):
        return f"cannot reach {endpoint}: no connection within {CHECK_CONNECT_TIMEOUT_SECONDS:g} s"
    if isinstance(error, botocore.exceptions.ReadTimeoutError):
        return f"{endpoint} did not answer within {CHECK_READ_TIMEOUT_SECONDS:g} s"
    if isinstance(error, botocore.exceptions.ConnectionError):
        return f"cannot reach {endpoint}: {_os_reason(error) or one_line(error)}"
    return f"cannot use {endpoint}: {one_line(error)}"


def _int(attributes: Mapping[str, str], name: str) -> int | None:
    value = attributes.get(name)
    return None if value is None else int(value)


def _redrive(attributes: Mapping[str, str]) -> tuple[str | None, int | None]:
    """The dead-letter queue's ARN and maxReceiveCount, or (None, None) without a policy."""
    raw = attributes.get("RedrivePolicy")
    if not raw:
        return None, None
    policy = json.loads(raw)
    count = policy.get("maxReceiveCount")
    return policy.get("deadLetterTargetArn"), None if count is None else int(count)


def probe_sqs_status(queue: SqsQueue) -> SqsStatus:
    """Ask SQS for `queue`'s attributes once and report what came back (or why nothing did)."""
    group_id = queue.message_group_id or os.environ.get(GROUP_ID_VARIABLE) or None
    configuration: dict[str, Any] = {
        "queue_url": queue.queue_url or None,
        "region": queue.region_name or None,
        "fifo": queue.is_fifo,
        "message_group_id": group_id if queue.is_fifo else None,
    }
    endpoint = queue.endpoint_url or os.environ.get(ENDPOINT_VARIABLE) or None
    missing = [
        variable
        for variable, value in (
            (QUEUE_URL_VARIABLE, queue.queue_url),
            (REGION_VARIABLE, queue.region_name),
        )
        if not value
    ]
    if missing:
        return SqsStatus(
            configured=False,
            reachable=False,
            endpoint_url=endpoint,
            error=f"SQS is not configured: set {' and '.join(missing)}",
            **configuration,
        )
    try:
        endpoint = queue.resolved_endpoint_url
    except ValueError as error:  # botocore rejects a malformed endpoint override here
        return SqsStatus(
            configured=True,
            reachable=False,
            endpoint_url=endpoint,
            error=f"the SQS endpoint is not usable: {one_line(error)}",
            **configuration,
        )
    try:
        attributes = queue.check_attributes(
            ATTRIBUTE_NAMES,
            max_attempts=CHECK_MAX_ATTEMPTS,
            connect_timeout_seconds=CHECK_CONNECT_TIMEOUT_SECONDS,
            read_timeout_seconds=CHECK_READ_TIMEOUT_SECONDS,
        )
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as error:
        return SqsStatus(
            configured=True,
            reachable=False,
            endpoint_url=endpoint,
            error=error_reason(error, endpoint),
            **configuration,
        )
    if "ApproximateNumberOfMessages" not in attributes:
        return SqsStatus(
            configured=True,
            reachable=False,
            endpoint_url=endpoint,
            error=f"{endpoint} answered without the queue's attributes; is it SQS?",
            **configuration,
        )
    dead_letter_target_arn, max_receive_count = _redrive(attributes)
    return SqsStatus(
        configured=True,
        reachable=True,
        endpoint_url=endpoint,
        visible_messages=_int(attributes, "ApproximateNumberOfMessages"),
        in_flight_messages=_int(attributes, "ApproximateNumberOfMessagesNotVisible"),
        delayed_messages=_int(attributes, "ApproximateNumberOfMessagesDelayed"),
        maximum_message_size_bytes=_int(attributes, "MaximumMessageSize"),
        message_retention_seconds=_int(attributes, "MessageRetentionPeriod"),
        visibility_timeout_seconds=_int(attributes, "VisibilityTimeout"),
        dead_letter_target_arn=dead_letter_target_arn,
        max_receive_count=max_receive_count,
        **configuration,
    )


def sqs_status_from_environment() -> SqsStatus:
    """The status of the queue that AWS_SQS_QUEUE_URL and AWS_REGION name (as the job sees it)."""
    queue = SqsQueue(
        queue_url=os.environ.get(QUEUE_URL_VARIABLE, "").strip(),
        region_name=os.environ.get(REGION_VARIABLE, "").strip(),
    )
    return probe_sqs_status(queue)
