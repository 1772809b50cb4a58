"""The SQS queue as a Dagster resource: where it is, how to reach it, and a client made once a run.

Configuration and a factory only: `batch_queue()` hands out `sqs.SqsBatchQueue`, which sends.
"""

from collections.abc import Sequence
from typing import Any

import boto3
import dagster as dg
from botocore.config import Config as BotocoreConfig
from dagster_aws.utils import ResourceWithBoto3Configuration
from pydantic import Field, PrivateAttr

from campaign_pipeline.errors import SettingsError
from campaign_pipeline.settings import one_of, positive_int
from campaign_pipeline.sqs import SqsBatchQueue, is_fifo_queue

CONCURRENCY_VARIABLE = "SQS_MAX_CONCURRENT_BATCHES"
FAIR_QUEUE_GROUP_VARIABLE = "SQS_FAIR_QUEUE_GROUP"
# What a standard queue's MessageGroupId names, turning it into a fair queue: each
# organization (or each campaign) is one tenant.
FAIR_QUEUE_GROUPS = ("organization", "campaign")
DEFAULT_MAX_CONCURRENT_BATCHES = 64


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
        description="SendMessageBatch calls in flight at once, to cover the network round trip "
        f"(docs/benchmarks.md). Unset: {CONCURRENCY_VARIABLE}, else "
        f"{DEFAULT_MAX_CONCURRENT_BATCHES}. A FIFO queue without high throughput mode takes 300 "
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
    _batch_queue: SqsBatchQueue | None = PrivateAttr(default=None)

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
                # Entries are built here, typed and sized; SQS validates them again anyway,
                # so botocore's own check of every call would only cost CPU.
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

    @property
    def is_fifo(self) -> bool:
        """Whether the queue is a FIFO queue."""
        return is_fifo_queue(self.queue_url)

    def batch_queue(self, client: Any = None) -> SqsBatchQueue:
        """The queue to send to, made once (it remembers the queue's MaximumMessageSize).

        With `client` (a wrapper of `self.client` that times or slows calls, say), a new queue
        of the same settings over it.

        Raises:
            SettingsError: SQS_MAX_CONCURRENT_BATCHES or SQS_FAIR_QUEUE_GROUP is unusable.
        """
        if self._batch_queue is not None and client is None:
            return self._batch_queue
        queue = SqsBatchQueue(
            client or self.client,
            self.queue_url,
            message_group_id=self.message_group_id,
            fair_grouping=self.fair_queue_grouping,
            concurrency=self.concurrency,
            max_entry_retries=self.max_entry_retries,
            retry_base_seconds=self.retry_base_seconds,
            retry_cap_seconds=self.retry_cap_seconds,
        )
        if client is None:
            self._batch_queue = queue
        return queue

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
