"""The commands that only look: `status` and `preview` (a campaign), `messages` and `sqs-status`."""

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg

from campaign_pipeline.cli.common import (
    PROG,
    QUEUE_URL_VARIABLE,
    CliError,
    Commands,
    ParentParsers,
    display_database_url,
    err,
    open_queue,
    out,
    parse_campaign_id,
    pretty,
    store_in_use,
    whole_number,
)
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.services.preview import (
    DEFAULT_SAMPLE_SIZE,
    format_preview,
    preview_report,
)
from campaign_pipeline.services.sqs_health import sqs_status_from_environment
from campaign_pipeline.services.status import RunSummary, campaign_report, format_report
from campaign_pipeline.store.engine import default_database_url

T = TypeVar("T")

MESSAGES_DESCRIPTION = (
    "Print up to --limit messages waiting in the queue ($AWS_SQS_QUEUE_URL in $AWS_REGION; "
    "$AWS_ENDPOINT_URL_SQS for a local server) as a JSON list. They are received with "
    "VisibilityTimeout=0: nothing is deleted or hidden from the real consumer. SQS may then "
    "return the same messages again (a FIFO queue hands out a group's later messages only once "
    "the earlier ones are deleted; a standard queue returns a sample), so expect at most about "
    "ten messages per message group. Each receive adds one to ApproximateReceiveCount, which a "
    "redrive policy's maxReceiveCount counts too."
)

SQS_STATUS_DESCRIPTION = (
    "Show whether SQS is configured ($AWS_SQS_QUEUE_URL in $AWS_REGION; $AWS_ENDPOINT_URL_SQS "
    "for a local server; never credentials), whether the queue answers, and its attributes: "
    "approximate visible, in-flight and delayed messages, maximum message size, retention, "
    "visibility timeout and dead-letter queue. Exit status 0 when the queue answers, 1 when it "
    "does not (unreachable, missing, refused), 2 when SQS is not configured."
)


def peek_messages(client: Any, queue_url: str, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` messages in the queue, received with VisibilityTimeout=0 (none consumed).

    Stops when a receive brings nothing new: see `MESSAGES_DESCRIPTION` for why that can be
    fewer than `limit`.
    """
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(limit // 10 * 3 + 3):
        response = client.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=min(10, limit - len(seen)),
            VisibilityTimeout=0,
            WaitTimeSeconds=0,
        )
        new = [m for m in response.get("Messages", []) if m["MessageId"] not in seen]
        if not new:
            break
        for message in new[: limit - len(seen)]:
            seen[message["MessageId"]] = message
        if len(seen) >= limit:
            break
    return list(seen.values())


def message_body(message: dict[str, Any]) -> Any:
    """The message's body as JSON, or as the text it is when it is not JSON."""
    try:
        return json.loads(message["Body"])
    except (json.JSONDecodeError, TypeError):
        return message["Body"]


def cmd_messages(args: argparse.Namespace) -> int:
    """Print messages waiting in the queue as a JSON list, without consuming them."""
    queue = open_queue(args.queue_url)
    total = queue.batch_queue().attributes().get("ApproximateNumberOfMessages", "?")
    messages = peek_messages(queue.client, queue.queue_url, args.limit)
    err(
        f"{len(messages)} of about {total} messages in {queue.queue_url} "
        "(received with VisibilityTimeout=0: still in the queue)"
    )
    out(pretty([message_body(message) for message in messages]))
    return 0


def cmd_sqs_status(args: argparse.Namespace) -> int:
    """Print the queue's configuration and attributes; 1 if it does not answer, 2 if unset."""
    status = sqs_status_from_environment()
    out(pretty(status.as_dict()) if args.json else status.format_table())
    if status.error:
        err(f"{PROG}: error: {status.error}")
    if not status.configured:
        return 2
    return 0 if status.reachable else 1


def _runs(campaign_id: str) -> list[RunSummary]:
    """The campaign's runs in the Dagster instance at $DAGSTER_HOME (`process` uses ./.dagster)."""
    from campaign_pipeline.services.dagster_client import (
        DAGSTER_URL_VARIABLE,
        DEFAULT_DAGSTER_URL,
        campaign_runs_in_instance,
    )

    home = os.environ.get("DAGSTER_HOME", "").strip() or ".dagster"
    if not Path(home).is_dir():
        return []
    os.environ["DAGSTER_HOME"] = str(Path(home).resolve())
    url = os.environ.get(DAGSTER_URL_VARIABLE) or DEFAULT_DAGSTER_URL
    with dg.DagsterInstance.get() as instance:
        return campaign_runs_in_instance(instance, campaign_id, url)


def _read_campaign(campaign_id: str, read: Callable[[CampaignStore], T]) -> T:
    """`read(store)` on the campaign store, once the campaign is known to exist there."""
    with store_in_use("read campaigns from") as store:
        if store.campaigns.get(campaign_id) is None:
            shown = display_database_url(default_database_url())
            raise CliError(f"campaign {campaign_id} does not exist in {shown}")
        return read(store)


def cmd_status(args: argparse.Namespace) -> int:
    """Print one campaign's status, counts, progress, last error and runs."""
    campaign_id = parse_campaign_id(args.campaign_id)
    report = _read_campaign(
        campaign_id, lambda store: campaign_report(store, campaign_id, _runs(campaign_id))
    )
    if args.json:
        out(pretty(report))
    else:
        for line in format_report(report):
            out(line)
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    """Print what a run would make of the campaign's pending recipients; change and send nothing."""
    campaign_id = parse_campaign_id(args.campaign_id)
    queue_limit, report = _read_campaign(
        campaign_id, lambda store: preview_report(store, campaign_id, args.limit)
    )
    if args.json:
        out(pretty(report.as_dict()))
        return 0
    if queue_limit.assumed:
        err(
            f"{PROG}: SQS is not configured (set {' and '.join(queue_limit.missing)}); assuming "
            f"the queue takes messages of up to {queue_limit.max_message_bytes:,} bytes (1 MiB)"
        )
    for line in format_preview(report):
        out(line)
    return 0


def add_commands(commands: Commands, parents: ParentParsers) -> None:
    """Add `status`, `preview`, `messages` and `sqs-status`."""
    status = commands.add_parser(
        "status",
        parents=[parents.common],
        help="show a campaign's status, counts, progress and runs",
        description="Show the campaign's status, send_at, recipients by status, the sending "
        "run's messages/s and time left, who paused, resumed or cancelled it, its last error, "
        "and its runs with links (from the Dagster instance at $DAGSTER_HOME, default "
        "./.dagster; links to $DAGSTER_URL). The campaign is read from CAMPAIGN_DATABASE_URL.",
    )
    status.add_argument("campaign_id", metavar="CAMPAIGN_ID", help="UUID of the campaign")
    status.add_argument("--json", action="store_true", help="print one JSON document")
    status.set_defaults(handler=cmd_status)

    preview = commands.add_parser(
        "preview",
        parents=[parents.common],
        help="show the payloads a run would queue, without changing or sending anything",
        description="Build the payload of every pending recipient exactly as a run would (the "
        "same code, the queue's MaximumMessageSize) and print how many recipients there are, "
        "how many are valid, the invalid ones by reason, and the first --limit payloads (phone "
        "numbers masked; --json prints them as they would be queued). Works on a campaign in "
        "any status but cancelled. Writes nothing; asks SQS only for the queue's maximum "
        "message size ($AWS_SQS_QUEUE_URL in $AWS_REGION), assuming 1 MiB when it is not "
        "configured. The campaign is read from CAMPAIGN_DATABASE_URL.",
    )
    preview.add_argument("campaign_id", metavar="CAMPAIGN_ID", help="UUID of the campaign")
    preview.add_argument(
        "--limit",
        type=whole_number(0),
        default=DEFAULT_SAMPLE_SIZE,
        help=f"valid payloads to show (default {DEFAULT_SAMPLE_SIZE})",
    )
    preview.add_argument("--json", action="store_true", help="print one JSON document")
    preview.set_defaults(handler=cmd_preview)

    messages = commands.add_parser(
        "messages",
        parents=[parents.common],
        help="show messages waiting in the queue without consuming them",
        description=MESSAGES_DESCRIPTION,
    )
    messages.add_argument(
        "--limit", type=whole_number(1), default=10, help="most messages to show (default 10)"
    )
    messages.add_argument("--queue-url", help=f"queue to read (default ${QUEUE_URL_VARIABLE})")
    messages.set_defaults(handler=cmd_messages)

    sqs_status = commands.add_parser(
        "sqs-status",
        parents=[parents.common],
        help="show whether the queue answers, its depth and settings",
        description=SQS_STATUS_DESCRIPTION,
    )
    sqs_status.add_argument("--json", action="store_true", help="print the status as JSON")
    sqs_status.set_defaults(handler=cmd_sqs_status)
