"""One SQS queue spoken to in batches: SendMessageBatch with retries, several calls in flight.

Free of Dagster: `resources.sqs_queue.SqsQueue` configures it and hands it a boto3 client
(any object with boto3's `send_message_batch` and `get_queue_attributes` will do).
"""

import os
import random
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from campaign_pipeline.errors import IncompleteAnswer
from campaign_pipeline.privacy import mask_phone_numbers

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


def is_fifo_queue(queue_url: str) -> bool:
    """FIFO queues are named `*.fifo`."""
    return queue_url.endswith(".fifo")


class SqsBatchQueue:
    """A queue (standard or FIFO) that campaign messages are sent to, ten at a time.

    `fair_grouping` ('organization' or 'campaign') names each message's MessageGroupId on a
    standard queue, making it a fair queue; FIFO queues group by `message_group_id`, else
    SQS_MESSAGE_GROUP_ID, else the campaign.
    """

    def __init__(
        self,
        client: Any,
        queue_url: str,
        *,
        message_group_id: str | None = None,
        fair_grouping: str | None = None,
        concurrency: int = 64,
        max_entry_retries: int = 5,
        retry_base_seconds: float = 0.2,
        retry_cap_seconds: float = 10.0,
    ) -> None:
        self.client = client
        self.queue_url = queue_url
        self.message_group_id = message_group_id
        self.fair_grouping = fair_grouping
        self.concurrency = concurrency
        self.max_entry_retries = max_entry_retries
        self.retry_base_seconds = retry_base_seconds
        self.retry_cap_seconds = retry_cap_seconds
        self._max_message_bytes: int | None = None

    @property
    def is_fifo(self) -> bool:
        """Whether this is a FIFO queue."""
        return is_fifo_queue(self.queue_url)

    def fair_group_id(self, campaign_id: str, organization_id: str) -> str | None:
        """The MessageGroupId of a campaign's messages on a standard (fair) queue, if any."""
        if self.is_fifo or self.fair_grouping is None:
            return None
        return organization_id if self.fair_grouping == "organization" else campaign_id

    def attributes(self) -> dict[str, str]:
        """All of the queue's attributes (GetQueueAttributes)."""
        response = self.client.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["All"])
        return response.get("Attributes", {})

    def max_message_bytes(self) -> int:
        """The queue's `MaximumMessageSize`, which also bounds a whole batch (asked once)."""
        if self._max_message_bytes is None:
            self._max_message_bytes = int(self.attributes()["MaximumMessageSize"])
        return self._max_message_bytes

    def entries(
        self,
        campaign_id: str,
        ids: Sequence[str],
        bodies: Sequence[str],
        fair_group_id: str | None = None,
    ) -> list[dict[str, str]]:
        """SendMessageBatch entries: Id = audience id; FIFO ones deduplicated per recipient."""
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
            entry["Id"]: entry for entry in self.entries(campaign_id, ids, bodies, fair_group_id)
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
                    sending = pool.submit(self.send_batch, campaign_id, *batch, fair_group_id)
                    in_flight.append(sending)
                if not in_flight:
                    return
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                for future in done:
                    in_flight.remove(future)
                    result = future.result()
                    failed = failed or result.error is not None
                    yield result
