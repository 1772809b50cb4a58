"""The issue's invariant, checked after any scenario: nothing lost, nothing sent twice.

`check_campaign_invariant` reads a campaign's `campaign_audience` rows through the store's
engine, drains the queue (receive, delete, until it is empty), and asserts:

- every `ready_to_send` recipient has an `sqs_message_id`, no failure reason or code, and a drained
  message with that `MessageId` whose body's `campaignAudienceId`, `campaignId` and `to` are the
  recipient's;
- every `failed` recipient has a non-empty reason, with no phone number in it, a failure code
  of `FailureCode` (`sqs_rejected` exactly when SQS rejected it), and no message id;
- `pending` recipients only when the scenario allows them (a run that stopped early): their
  messages may then be in the queue already, sent before the crash window closed;
- every drained body is JSON valid against `campaign_pipeline/schemas/payload.schema.json` and
  holds only characters SQS accepts;
- no recipient is in the queue twice on a FIFO queue; on a standard queue at most
  `max_duplicates` extra copies in all (each with the recipient's `campaignAudienceId`);
- no other message: one for a failed recipient, for no recipient of the campaign, or (unless
  `ignore_other_campaigns`) for another campaign is an error.

Every problem found is listed in one `AssertionError`. The report says what was found, for the
caller's own assertions. To check several campaigns sharing a queue, drain it once with
`drain_queue` and pass its messages to each check with `ignore_other_campaigns=True`.
"""

import json
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from campaign_pipeline.failure_codes import FailureCode
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.store.schema import campaign_audience
from tests.support.payload_schema import payload_validator

# What SQS accepts in a message body (W3C XML characters); anything else it rejects.
SQS_BODY_CHARACTERS = re.compile("^[\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]*$")

FAILURE_CODES = frozenset(code.value for code in FailureCode)

# An E.164 number as SQS might quote it in an error; masked, only its last two digits remain.
UNMASKED_PHONE_NUMBER = re.compile(r"\+\d{7,}")


@dataclass
class InvariantReport:
    """What `check_campaign_invariant` found, once the invariant held."""

    queued: int
    failed: int
    pending: int
    # audience id -> reason, for failed recipients
    failure_reasons: dict[str, str]
    # audience id -> failure code, for failed recipients
    failure_codes: dict[str, str]
    # audience id -> body of the message stored as its sqs_message_id, for ready_to_send ones
    bodies: dict[str, str]
    # audience id -> copies in the queue beyond the first (standard queues only)
    duplicates: dict[str, int]
    # pending recipients whose message is already in the queue (the documented crash window)
    pending_in_queue: list[str]
    # messages that match no ready_to_send recipient (always empty when the check passed,
    # except for pending_in_queue ones)
    extra_messages: list[dict[str, Any]]
    # messages of other campaigns, set aside when ignore_other_campaigns is True
    other_campaign_messages: list[dict[str, Any]]
    # every message of this campaign that was drained
    messages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def reasons(self) -> Counter[str]:
        """How many recipients failed with each reason."""
        return Counter(self.failure_reasons.values())

    @property
    def codes(self) -> Counter[str]:
        """How many recipients failed with each failure code."""
        return Counter(self.failure_codes.values())


def drain_queue(
    sqs_client: Any, queue_url: str, *, timeout_seconds: float = 60.0
) -> list[dict[str, Any]]:
    """Receive and delete every message, until two receives in a row bring nothing.

    Fails when draining takes longer than `timeout_seconds` or messages are left in flight
    (received elsewhere and not deleted), which the drain could not see.
    """
    deadline = time.monotonic() + timeout_seconds
    messages: list[dict[str, Any]] = []
    empty_receives = 0
    while empty_receives < 2:
        assert time.monotonic() < deadline, (
            f"draining {queue_url} took over {timeout_seconds} s ({len(messages)} messages)"
        )
        batch = sqs_client.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            AttributeNames=["All"],
            WaitTimeSeconds=0,
            VisibilityTimeout=60,
        ).get("Messages", [])
        if not batch:
            empty_receives += 1
            continue
        empty_receives = 0
        messages += batch
        sqs_client.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": message["ReceiptHandle"]}
                for i, message in enumerate(batch)
            ],
        )
    attributes = sqs_client.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    left = {name: int(count) for name, count in attributes.items() if int(count)}
    assert not left, f"{queue_url} still holds messages after draining: {left}"
    return messages


def _audience_rows(store: CampaignStore, campaign_id: str) -> list[sa.Row[Any]]:
    query = sa.select(
        campaign_audience.c.id,
        campaign_audience.c.status,
        campaign_audience.c.sqs_message_id,
        campaign_audience.c.failure_reason,
        campaign_audience.c.failure_code,
        campaign_audience.c.phone_number,
    ).where(campaign_audience.c.campaign_id == campaign_id)
    with store.engine.connect() as connection:
        return list(connection.execute(query))


def _parse(message: dict[str, Any], problems: list[str]) -> dict[str, Any] | None:
    body = message["Body"]
    if not SQS_BODY_CHARACTERS.match(body):
        problems.append(f"message {message['MessageId']} has characters SQS does not accept")
    try:
        payload = json.loads(body)
    except json.JSONDecodeError as error:
        problems.append(f"message {message['MessageId']} is not JSON: {error}")
        return None
    errors = [error.message[:200] for error in payload_validator().iter_errors(payload)]
    if errors:
        problems.append(f"message {message['MessageId']} breaks the payload schema: {errors}")
    return payload if isinstance(payload, dict) else None


def check_campaign_invariant(
    store: CampaignStore,
    campaign_id: str,
    sqs_client: Any,
    queue_url: str,
    *,
    fifo: bool,
    expect_pending_allowed: bool = False,
    max_duplicates: int = 0,
    ignore_other_campaigns: bool = False,
    messages: Sequence[dict[str, Any]] | None = None,
    drain_timeout_seconds: float = 180.0,
) -> InvariantReport:
    """Assert the invariant for `campaign_id` (see the module docstring) and report.

    Args:
        store: The campaign store the run used; its engine reads `campaign_audience`.
        campaign_id: The campaign to check.
        sqs_client: A boto3 SQS client for the queue's endpoint.
        queue_url: The queue the run sent to; it is drained (messages are deleted).
        fifo: Whether the queue is FIFO: then no recipient may be in it twice.
        expect_pending_allowed: Whether `pending` recipients are expected (a run that failed
            or stopped early); they, and their messages in the queue, are then no error.
        max_duplicates: Extra copies allowed in all on a standard queue (the crash window).
        ignore_other_campaigns: Set other campaigns' messages aside instead of failing.
        messages: Messages already drained (see `drain_queue`); the queue is then not read.
        drain_timeout_seconds: Longest time draining may take.
    """
    if messages is None:
        messages = drain_queue(sqs_client, queue_url, timeout_seconds=drain_timeout_seconds)
    problems: list[str] = []
    rows = {row.id: row for row in _audience_rows(store, campaign_id)}
    ours: list[tuple[dict[str, Any], dict[str, Any]]] = []
    others: list[dict[str, Any]] = []
    for message in messages:
        payload = _parse(message, problems)
        if payload is not None and payload.get("campaignId") == campaign_id:
            ours.append((message, payload))
        elif ignore_other_campaigns and payload is not None:
            others.append(message)
        else:
            problems.append(
                f"message {message['MessageId']} is not of campaign {campaign_id}: "
                f"campaignId {payload.get('campaignId') if payload else None!r}"
            )
    by_message_id = {message["MessageId"]: (message, payload) for message, payload in ours}
    copies = Counter(payload.get("campaignAudienceId") for _, payload in ours)
    statuses = Counter(row.status for row in rows.values())
    unknown_statuses = set(statuses) - {"ready_to_send", "failed", "pending"}
    if unknown_statuses:
        problems.append(f"recipients in unknown statuses: {sorted(unknown_statuses)}")
    if statuses["pending"] and not expect_pending_allowed:
        problems.append(f"{statuses['pending']} recipients are still pending")

    bodies: dict[str, str] = {}
    failure_reasons: dict[str, str] = {}
    failure_codes: dict[str, str] = {}
    for row in rows.values():
        if row.status == "failed":
            if not (row.failure_reason or "").strip():
                problems.append(f"failed recipient {row.id} has no reason")
            else:
                failure_reasons[row.id] = row.failure_reason
            if UNMASKED_PHONE_NUMBER.search(row.failure_reason or ""):
                problems.append(f"failed recipient {row.id}'s reason holds a phone number")
            if row.sqs_message_id is not None:
                problems.append(f"failed recipient {row.id} has a message id")
            if row.failure_code not in FAILURE_CODES:
                problems.append(f"failed recipient {row.id} has failure code {row.failure_code!r}")
            else:
                failure_codes[row.id] = row.failure_code
            rejected = (row.failure_reason or "").startswith("SQS rejected the message")
            if rejected != (row.failure_code == FailureCode.SQS_REJECTED):
                problems.append(
                    f"failed recipient {row.id}: code {row.failure_code!r} does not go with "
                    f"reason {row.failure_reason!r}"
                )
        elif row.status == "ready_to_send":
            found = by_message_id.get(row.sqs_message_id or "")
            if found is None:
                problems.append(
                    f"ready_to_send recipient {row.id}: message {row.sqs_message_id!r} "
                    "is not in the queue"
                )
                continue
            message, payload = found
            if payload.get("campaignAudienceId") != row.id:
                problems.append(
                    f"message {row.sqs_message_id} of recipient {row.id} carries "
                    f"campaignAudienceId {payload.get('campaignAudienceId')!r}"
                )
            if payload.get("to") != row.phone_number:
                problems.append(f"message {row.sqs_message_id} is not addressed to {row.id}")
            if row.failure_reason is not None or row.failure_code is not None:
                problems.append(f"ready_to_send recipient {row.id} has a failure reason or code")
            bodies[row.id] = message["Body"]
        elif any(v is not None for v in (row.sqs_message_id, row.failure_reason, row.failure_code)):
            problems.append(f"pending recipient {row.id} has an outcome recorded")

    duplicates = {audience_id: n - 1 for audience_id, n in copies.items() if n > 1}
    if fifo and duplicates:
        problems.append(f"recipients queued more than once on a FIFO queue: {duplicates}")
    elif sum(duplicates.values()) > max_duplicates:
        problems.append(
            f"{sum(duplicates.values())} duplicate messages, over the {max_duplicates} allowed: "
            f"{duplicates}"
        )
    pending_in_queue: list[str] = []
    extra: list[dict[str, Any]] = []
    for message, payload in ours:
        row = rows.get(payload.get("campaignAudienceId"))
        if row is not None and row.status == "ready_to_send":
            continue
        if row is not None and row.status == "pending" and expect_pending_allowed:
            pending_in_queue.append(row.id)
            continue
        extra.append(message)
        problems.append(
            f"message {message['MessageId']} is for "
            + (f"a {row.status} recipient {row.id}" if row else "no recipient of the campaign")
        )
    if problems:
        shown = "\n  ".join(problems[:30])
        more = f"\n  ... and {len(problems) - 30} more" if len(problems) > 30 else ""
        raise AssertionError(f"campaign {campaign_id} breaks the invariant:\n  {shown}{more}")
    return InvariantReport(
        queued=statuses["ready_to_send"],
        failed=statuses["failed"],
        pending=statuses["pending"],
        failure_reasons=failure_reasons,
        failure_codes=failure_codes,
        bodies=bodies,
        duplicates=duplicates,
        pending_in_queue=sorted(set(pending_in_queue)),
        extra_messages=extra,
        other_campaign_messages=others,
        messages=[message for message, _ in ours],
    )
