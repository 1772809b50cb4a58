"""The operator's commands: `pause`, `resume`, `cancel` and `schedule` a campaign.

Each is one compare-and-set in the campaign store (`CampaignStore.control`); a run sending for
the campaign reads its status every second and stops by itself. One line on stdout and exit
status 0 when done (or nothing to do); one line on stderr and status 2 when refused.
"""

import argparse
import getpass
import socket
from collections.abc import Callable
from datetime import UTC, datetime

from campaign_pipeline.cli.common import (
    CliError,
    Commands,
    ParentParsers,
    out,
    parse_campaign_id,
    store_in_use,
)
from campaign_pipeline.errors import CampaignControlError
from campaign_pipeline.lifecycle import Command
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.settings import campaign_processing_interval_seconds
from campaign_pipeline.store.records import ControlResult

AFTER = {
    "pause": "a run sending for it stops within seconds, leaving the rest pending",
    "cancel": "a run sending for it stops within seconds; its pending recipients are never sent",
}


def operator() -> str:
    """Who is at this command line, for the campaign's record."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container, say)
        user = "unknown"
    return f"{user}@{socket.gethostname()} (cli)"


def _after(result: ControlResult) -> str:
    if not result.changed:
        return ""
    if result.command == "resume":
        return (
            f"; the processing sensor starts it within {campaign_processing_interval_seconds()} s"
        )
    if result.command in AFTER and result.before == "ready_to_launch":
        return f"; {AFTER[result.command]}"
    return ""


def _change(campaign_id: str, change: Callable[[CampaignStore], ControlResult]) -> ControlResult:
    """Apply one change to the campaign in CAMPAIGN_DATABASE_URL; problems are `CliError`s."""
    with store_in_use("update") as store:
        try:
            return change(store)
        except CampaignControlError as error:
            raise CliError(str(error)) from None


def _apply(args: argparse.Namespace, command: Command) -> int:
    campaign_id = parse_campaign_id(args.campaign_id)
    accept_invalid = getattr(args, "accept_invalid", False)
    result = _change(
        campaign_id,
        lambda store: store.control.apply(campaign_id, command, operator(), accept_invalid),
    )
    out(result.message + _after(result))
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    """Pause a campaign: nothing more is sent until `resume`."""
    return _apply(args, "pause")


def cmd_resume(args: argparse.Namespace) -> int:
    """Resume a paused campaign: its pending recipients are sent."""
    return _apply(args, "resume")


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a campaign for good."""
    return _apply(args, "cancel")


def parse_send_at(text: str) -> datetime:
    """An ISO 8601 time with its offset (`2026-12-24T09:00:00+01:00`, `...Z`) in UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time such as 2026-12-24T09:00:00+01:00, not {text!r}"
        ) from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no time zone; add one, such as Z or +01:00")
    return moment.astimezone(UTC)


def cmd_schedule(args: argparse.Namespace) -> int:
    """Set or clear the time a campaign is started at."""
    if (args.send_at is None) == (not args.clear):
        raise CliError("give either a time or --clear")
    campaign_id = parse_campaign_id(args.campaign_id)
    result = _change(
        campaign_id, lambda store: store.control.schedule(campaign_id, args.send_at, operator())
    )
    past = args.send_at is not None and args.send_at <= datetime.now(UTC)
    out(result.message + ("; that is past, so it is due now" if past else ""))
    return 0


def add_commands(commands: Commands, parents: ParentParsers) -> None:
    """Add `pause`, `resume`, `cancel` and `schedule`."""
    store_note = " The campaign is read from CAMPAIGN_DATABASE_URL."
    for name, handler, summary, description in (
        (
            "pause",
            cmd_pause,
            "stop sending a campaign until it is resumed",
            "Pause an 'asset_generated' or 'ready_to_launch' campaign. A run sending for it "
            "stops within seconds, records what SQS accepted and leaves the rest pending; no "
            "sensor starts it again. Pausing a paused campaign does nothing.",
        ),
        (
            "resume",
            cmd_resume,
            "continue a paused campaign",
            "Set a paused campaign back to 'asset_generated' (if no recipient was handled) or "
            "'ready_to_launch'; the processing sensor starts it within "
            "CAMPAIGN_PROCESSING_INTERVAL and only pending recipients are sent.",
        ),
        (
            "cancel",
            cmd_cancel,
            "stop a campaign for good",
            "Cancel a campaign in any status. A run sending for it stops within seconds; its "
            "pending recipients stay pending and nothing processes it again.",
        ),
    ):
        parser = commands.add_parser(
            name, parents=[parents.common], help=summary, description=description + store_note
        )
        parser.add_argument("campaign_id", metavar="CAMPAIGN_ID", help="UUID of the campaign")
        if name == "resume":
            parser.add_argument(
                "--accept-invalid",
                action="store_true",
                help="send the valid recipients even if the preflight guard held the campaign "
                "back for too many invalid ones",
            )
        parser.set_defaults(handler=handler)

    schedule = commands.add_parser(
        "schedule",
        parents=[parents.common],
        help="set the time a campaign starts (send_at)",
        description="Set the campaign's send_at: in 'asset_generated' it is not started before "
        "then; the sensor starts it at its first tick after. Only 'draft', 'asset_generated' "
        "and 'paused' campaigns can be scheduled." + store_note,
    )
    schedule.add_argument("campaign_id", metavar="CAMPAIGN_ID", help="UUID of the campaign")
    schedule.add_argument(
        "send_at",
        metavar="TIME",
        nargs="?",
        type=parse_send_at,
        help="ISO 8601 with a time zone, e.g. 2026-12-24T09:00:00+01:00",
    )
    schedule.add_argument("--clear", action="store_true", help="start as soon as it is due")
    schedule.set_defaults(handler=cmd_schedule)
