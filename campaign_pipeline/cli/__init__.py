"""The `campaign-pipeline` command: set up, process, control and inspect campaigns; the demo.

Output is this module's product, so it writes to stdout and stderr itself. Problems a person can
fix (a bad id, an unreachable database or queue, missing settings: a `CliError` or any error of
`campaign_pipeline.errors`) are one line on stderr and exit status 2; a failed run is one line
and status 1; anything unexpected is one line and status 1, with the traceback only under
`--debug`. `sqs-status` prints its report either way and exits 1 when the queue does not
answer, 2 when SQS is not configured.
"""

import argparse
import warnings
from collections.abc import Sequence

import dagster as dg

from campaign_pipeline.cli import (
    api,
    control,
    demo,
    frequency_cap,
    inspection,
    processing,
    suppress,
)
from campaign_pipeline.cli.common import PROG, CliError, ParentParsers, err
from campaign_pipeline.errors import CampaignPipelineError
from campaign_pipeline.text import one_line


def build_parser() -> argparse.ArgumentParser:
    """The command line: global options, then each command module's subcommands."""
    debug_help = "show the traceback of an unexpected error"
    parser = argparse.ArgumentParser(
        prog=PROG, description="Turn marketing campaigns into WhatsApp messages on AWS SQS."
    )
    parser.add_argument("--debug", action="store_true", help=debug_help)
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's --debug only ever adds to the global one.
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument(
        "-v", "--verbose", action="store_true", help="show Dagster's event log on stderr"
    )
    parents = ParentParsers(common=common, verbose=verbose)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    processing.add_commands(commands, parents)
    control.add_commands(commands, parents)
    suppress.add_commands(commands, parents)
    frequency_cap.add_commands(commands, parents)
    inspection.add_commands(commands, parents)
    demo.add_commands(commands, parents)
    api.add_commands(commands, parents)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    if not args.debug:
        # Dagster's notices about its own beta and preview APIs are not for this command's users.
        warnings.filterwarnings("ignore", category=dg.BetaWarning)
        warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    try:
        return args.handler(args)
    except (CliError, CampaignPipelineError) as error:
        err(f"{PROG}: error: {error}")
        return 2
    except KeyboardInterrupt:
        err(f"{PROG}: interrupted")
        return 130
    except Exception as error:
        if args.debug:
            raise
        err(f"{PROG}: error: {type(error).__name__}: {one_line(error)}")
        return 1
