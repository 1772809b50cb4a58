"""The SQS queue the WhatsApp sender consumes, spoken to in batches through boto3."""

import os
import random
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import boto3
import dagster as dg
from botocore.config import Config as BotocoreConfig
from dagster_aws.utils import ResourceWithBoto3Configuration
from pydantic import Field, PrivateAttr

from campaign_pipeline.errors import IncompleteAnswer, SettingsError
from campaign_pipeline.privacy import mask_phone_numbers
from campaign_pipeline.settings import one_of, positive_int

# Per-entry failures SQS reports as sender faults although a later attempt can succeed.
THROTTLING_CODES = frozenset(
    {
        "RequestThrottled",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "KMS.ThrottlingException",
    }
)

GROUP_ID_VARIABLE = "SQS_MESSAGE_GROUP_ID"
CONCURRENCY_VARIABLE = "SQS_MAX_CONCURRENT_BATCHES"
FAIR_QUEUE_GROUP_VARIABLE = "SQS_FAIR_QUEUE_GROUP"
# What a standard queue's MessageGroupId names, turning it into a fair queue: each
# organization (or each campaign) is one tenant.
FAIR_QUEUE_GROUPS = ("organization", "campaign")
DEFAULT_MAX_CONCURRENT_BATCHES = 64


@dataclass
class BatchResult:
    """What SQS did with one batch, after its retries, as columns.

    `accepted_ids[i]` was queued as `message_ids[i]`; `rejected` holds (id, error code, error
    message) of entries SQS refused for good. When `error` is set (the API call itself failed past
    its retries), entries in neither list were never confirmed and must stay pending.
    """

    accepted_ids: list[str] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str, str]] = field(default_factory=list)
    retried_entries: int = 0
    error: Exception | None = None


def is_retryable(failure: dict[str, Any]) -> bool:
    """Whether a `Failed` entry of SendMessageBatch is worth sending again."""
    return not failure.get("SenderFault", False) or failure.get("Code") in THROTTLING_CODES


def backoff_seconds(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter (AWS's recommendation), for retry `attempt` >= 0."""
    return random.uniform(0, min(cap, base * 2**attempt))


class SqsQueue(ResourceWithBoto3Configuration):
    """An SQS queue (standard or FIFO) that campaign messages are queued on.

    The session fields are dagster-aws's (`region_name`, `profile_name`, `endpoint_url`,
    `use_ssl`, `verify`, `max_attempts` and the `aws_*` credentials), as on its S3 and ECS
    resources. Left unset, the credentials come from boto3's default chain; set them only
    through `dg.EnvVar`, which keeps them out of the UI and the run config.
    """

    queue_url: str = Field(description="URL of the queue (AWS_SQS_QUEUE_URL).")
    region_name: str = Field(description="AWS region of the queue (AWS_REGION).")
    endpoint_url: str | None = Field(
        default=None,
        description="Endpoint override for a local SQS server; boto3's AWS_ENDPOINT_URL_SQS "
        "works too.",
    )
    message_group_id: str | None = Field(
        default=None,
        description="MessageGroupId on a FIFO queue. Unset: SQS_MESSAGE_GROUP_ID, "
        "else each campaign is its own group.",
    )
    fair_queue_group: str | None = Field(
        default=None,
        description="On a standard queue, the MessageGroupId of each message, so that SQS fair "
        "queues keep one tenant's backlog from delaying the others: 'organization' (its "
        "organization id) or 'campaign' (its campaign id). Unset: SQS_FAIR_QUEUE_GROUP, else no "
        "MessageGroupId. FIFO queues ignore it (their group is message_group_id's).",
    )
    max_concurrent_batches: int | None = Field(
        default=None,
        ge=1,
        description="SendMessageBatch calls in flight at once, to cover the network round trip. "
        f"Unset: {CONCURRENCY_VARIABLE}, else {DEFAULT_MAX_CONCURRENT_BATCHES}: behind 20 ms of "
        "latency, 16 sent 4,300 messages/s and 64 sent 6,200/s, where botocore alone peaked at "
        "8,200/s (benchmarks/compare.py). A FIFO queue without high throughput mode takes 300 "
        "calls/s: SQS throttles the excess and the calls are retried.",
    )
    max_attempts: int = Field(
        default=5,
        ge=1,
        description="Attempts per API call, first included (botocore standard retries).",
    )
    max_entry_retries: int = Field(
        default=5, ge=0, description="Resends of entries SQS reports as failed but retryable."
    )
    retry_base_seconds: float = Field(default=0.2, description="First backoff for entry retries.")
    retry_cap_seconds: float = Field(default=10.0, description="Longest backoff for entry retries.")
    connect_timeout_seconds: float = Field(default=5.0, description="TCP connect timeout.")
    read_timeout_seconds: float = Field(default=20.0, description="Response read timeout.")

    _client: Any = PrivateAttr(default=None)
    _max_message_bytes: int | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Make the boto3 client once per run; boto3 clients are thread-safe."""
        self._client = self._make_client()

    def _make_client(
        self,
        max_attempts: int | None = None,
        connect_timeout_seconds: float | None = None,
        read_timeout_seconds: float | None = None,
    ) -> Any:
        attempts = max_attempts or self.max_attempts
        session = boto3.session.Session(
            profile_name=self.profile_name or None,
            aws_access_key_id=self.aws_access_key_id or None,
            aws_secret_access_key=self.aws_secret_access_key or None,
            aws_session_token=self.aws_session_token or None,
        )
        return session.client(
            "sqs",
            region_name=self.region_name,
            endpoint_url=self.endpoint_url or None,
            use_ssl=self.use_ssl,
            verify=self.verify,
            config=BotocoreConfig(
                retries={"mode": "standard", "total_max_attempts": attempts},
                connect_timeout=connect_timeout_seconds or self.connect_timeout_seconds,
                read_timeout=read_timeout_seconds or self.read_timeout_seconds,
                max_pool_connections=max(10, self.concurrency),
                # Entries are built here, typed and sized; SQS validates them again anyway.
                # Skipping botocore's client-side check saves ~8% of its CPU per call.
                parameter_validation=False,
            ),
        )

    @property
    def client(self) -> Any:
        """The boto3 SQS client (made on first use outside a Dagster run)."""
        if self._client is None:
            self._client = self._make_client()
        return self._client

    @property
    def concurrency(self) -> int:
        """Calls in flight: the field, else SQS_MAX_CONCURRENT_BATCHES, else 64.

        Raises:
            SettingsError: the variable is not a positive whole number.
        """
        if self.max_concurrent_batches is not None:
            return self.max_concurrent_batches
        return positive_int(CONCURRENCY_VARIABLE, DEFAULT_MAX_CONCURRENT_BATCHES)

    @property
    def fair_queue_grouping(self) -> str | None:
        """What names a standard queue's message groups: the field, else SQS_FAIR_QUEUE_GROUP.

        Raises:
            SettingsError: neither 'organization' nor 'campaign'.
        """
        if self.fair_queue_group is None:
            return one_of(FAIR_QUEUE_GROUP_VARIABLE, FAIR_QUEUE_GROUPS)
        if self.fair_queue_group not in FAIR_QUEUE_GROUPS:
            raise SettingsError(
                f"fair_queue_group must be one of {', '.join(FAIR_QUEUE_GROUPS)}, "
                f"not {self.fair_queue_group!r}"
            )
        return self.fair_queue_group

    def fair_group_id(self, campaign_id: str, organization_id: str) -> str | None:
        """The MessageGroupId of a campaign's messages on a standard (fair) queue, if any.

        None on a FIFO queue, whose group is `message_group_id` (or SQS_MESSAGE_GROUP_ID, or the
        campaign), and on a standard queue without a grouping.

        Raises:
            SettingsError: the grouping is neither 'organization' nor 'campaign'.
        """
        grouping = self.fair_queue_grouping
        if self.is_fifo or grouping is None:
            return None
        return organization_id if grouping == "organization" else campaign_id

    @property
    def is_fifo(self) -> bool:
        """FIFO queues are named `*.fifo`."""
        return self.queue_url.endswith(".fifo")

    def attributes(self) -> dict[str, str]:
        """All of the queue's attributes (GetQueueAttributes)."""
        response = self.client.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["All"])
        return response.get("Attributes", {})

    @property
    def resolved_endpoint_url(self) -> str:
        """The endpoint boto3 talks to: `endpoint_url`, else AWS_ENDPOINT_URL_SQS, else AWS's.

        Raises:
            ValueError: botocore rejects a malformed endpoint override.
        """
        return str(self.client.meta.endpoint_url)

    def check_attributes(
        self,
        names: Sequence[str],
        *,
        max_attempts: int,
        connect_timeout_seconds: float,
        read_timeout_seconds: float,
    ) -> dict[str, str]:
        """The named queue attributes, asked by a short-lived client with its own retry budget.

        For health checks: the run's client (five attempts of up to 20 s each, by default)
        would keep a check on an endpoint that does not answer busy for minutes.

        Raises:
            botocore.exceptions.ClientError: SQS refused the call (a missing queue, say).
            botocore.exceptions.BotoCoreError: no connection, no answer or no credentials.
        """
        client = self._make_client(max_attempts, connect_timeout_seconds, read_timeout_seconds)
        try:
            response = client.get_queue_attributes(
                QueueUrl=self.queue_url, AttributeNames=list(names)
            )
        finally:
            client.close()
        return response.get("Attributes", {})

    def max_message_bytes(self) -> int:
        """The queue's `MaximumMessageSize`, which also bounds a whole batch."""
        if self._max_message_bytes is None:
            self._max_message_bytes = int(self.attributes()["MaximumMessageSize"])
        return self._max_message_bytes

    def _entries(
        self,
        campaign_id: str,
        ids: Sequence[str],
        bodies: Sequence[str],
        fair_group_id: str | None = None,
    ) -> list[dict[str, str]]:
        if not self.is_fifo:
            if fair_group_id is not None:
                return [
                    {"Id": i, "MessageBody": b, "MessageGroupId": fair_group_id}
                    for i, b in zip(ids, bodies, strict=True)
                ]
            return [{"Id": i, "MessageBody": b} for i, b in zip(ids, bodies, strict=True)]
        group_id = self.message_group_id or os.environ.get(GROUP_ID_VARIABLE) or campaign_id
        # A resend of the same recipient within SQS's 5-minute window is dropped by SQS.
        return [
            {
                "Id": i,
                "MessageBody": b,
                "MessageGroupId": group_id,
                "MessageDeduplicationId": f"{campaign_id}:{i}",
            }
            for i, b in zip(ids, bodies, strict=True)
        ]

    def send_batch(
        self,
        campaign_id: str,
        ids: Sequence[str],
        bodies: Sequence[str],
        fair_group_id: str | None = None,
    ) -> BatchResult:
        """Send up to ten messages (entry Id = audience id), retrying only passing failures.

        Accepted entries are never sent again. An API error that outlasts botocore's retries
        ends the batch with `error` set, keeping the outcomes already known. `fair_group_id`
        (see `fair_group_id()`) is each message's MessageGroupId on a standard queue.
        """
        entries = {
            entry["Id"]: entry for entry in self._entries(campaign_id, ids, bodies, fair_group_id)
        }
        result = BatchResult()
        to_send = list(entries.values())
        for attempt in range(self.max_entry_retries + 1):
            try:
                response = self.client.send_message_batch(QueueUrl=self.queue_url, Entries=to_send)
            except Exception as error:  # the caller decides; unconfirmed entries stay pending
                result.error = error
                return result
            for item in response.get("Successful", []):
                result.accepted_ids.append(item["Id"])
                result.message_ids.append(item["MessageId"])
            retry: list[dict[str, str]] = []
            for failure in response.get("Failed", []):
                if is_retryable(failure) and attempt < self.max_entry_retries:
                    retry.append(entries[failure["Id"]])
                else:
                    code = failure.get("Code", "Unknown")
                    message = mask_phone_numbers(failure.get("Message", ""))
                    result.rejected.append((failure["Id"], code, message))
            named = {item["Id"] for item in response.get("Successful", [])} | {
                failure["Id"] for failure in response.get("Failed", [])
            }
            if unanswered := sum(1 for entry in to_send if entry["Id"] not in named):
                # SQS names every entry in Successful or Failed; one it left out may or may
                # not be queued, so it stays pending (with the resends) and the run says why.
                result.error = IncompleteAnswer(
                    f"SendMessageBatch answered for {len(to_send) - unanswered} of "
                    f"{len(to_send)} entries; the other {unanswered} stay pending"
                )
                return result
            if not retry:
                break
            result.retried_entries += len(retry)
            time.sleep(backoff_seconds(attempt, self.retry_base_seconds, self.retry_cap_seconds))
            to_send = retry
        return result

    def send_batches(
        self,
        campaign_id: str,
        batches: Iterable[tuple[Sequence[str], Sequence[str]]],
        fair_group_id: str | None = None,
    ) -> Iterator[BatchResult]:
        """Send (ids, bodies) batches, several in flight; yield each result as it ends.

        Stops taking new batches after the first result with an error, and yields the batches
        still in flight before returning, so no confirmed outcome is lost. A finished call is
        yielded before the next batch is taken, since taking one may wait (a paced send).
        """
        batch_iter = iter(batches)
        # Passed only when set, so a subclass wrapping send_batch(campaign_id, ids, bodies)
        # keeps working on queues without fair groups.
        group = {"fair_group_id": fair_group_id} if fair_group_id is not None else {}
        with ThreadPoolExecutor(
            max_workers=self.concurrency, thread_name_prefix="sqs-send"
        ) as pool:
            in_flight: deque[Future[BatchResult]] = deque()
            failed = False
            while True:
                while not failed and len(in_flight) < self.concurrency:
                    if in_flight and in_flight[0].done():
                        break
                    batch = next(batch_iter, None)
                    if batch is None:
                        break
                    in_flight.append(pool.submit(self.send_batch, campaign_id, *batch, **group))
                if not in_flight:
                    return
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    in_flight.remove(future)
                    result = future.result()
                    failed = failed or result.error is not None
                    yield result
