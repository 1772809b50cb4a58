"""`suppress add|remove|list|import`: an organization's numbers that are never messaged.

The list is in CAMPAIGN_DATABASE_URL, beside the campaigns. A run does not queue a recipient
whose number is suppressed for the campaign's organization (`all`, or `marketing` for a
marketing campaign): it ends `failed`, `failure_code = 'opted_out'`.
"""

import argparse
from pathlib import Path

from campaign_pipeline.cli.common import (
    PROG,
    CliError,
    Commands,
    ParentParsers,
    err,
    organization_subcommands,
    out,
    pretty,
    store_in_use,
)
from campaign_pipeline.cli.control import operator
from campaign_pipeline.errors import SuppressionFileError
from campaign_pipeline.services.suppressions import (
    check_organization_id,
    import_file,
    suppress,
    unsuppress,
)
from campaign_pipeline.store.suppressions import DEFAULT_SCOPE, SCOPES

# `import`'s exit status when some lines were rejected (the others added).
SOME_REJECTED = 1
# Rejected lines named one by one, at most; the rest are counted.
REJECTED_SHOWN = 50


def cmd_add(args: argparse.Namespace) -> int:
    """Suppress numbers; one malformed number changes nothing."""
    with store_in_use() as store:
        added = suppress(
            store.suppressions,
            args.organization_id,
            args.phone_numbers,
            args.scope,
            args.reason,
            operator(),
        )
    out(
        f"organization {args.organization_id}: {added.added} suppressed ({args.scope}), "
        f"{added.present} already suppressed"
    )
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    """Take numbers off the list."""
    with store_in_use() as store:
        removed = unsuppress(store.suppressions, args.organization_id, args.phone_numbers)
    missing = len(set(args.phone_numbers)) - removed
    out(
        f"organization {args.organization_id}: {removed} removed"
        + (f", {missing} were not suppressed" if missing else "")
    )
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """The organization's suppressions, by number."""
    organization_id = check_organization_id(args.organization_id)
    with store_in_use() as store:
        listed = store.suppressions.listed(organization_id)
    if args.json:
        out(pretty([suppression.as_dict() for suppression in listed]))
        return 0
    out(f"organization {organization_id}: {len(listed)} suppressed")
    for suppression in listed:
        created = suppression.created_at.isoformat(timespec="seconds")
        details = "  ".join(
            part for part in (suppression.source, suppression.reason) if part is not None
        )
        out(f"  {suppression.phone_number:<16} {suppression.scope:<9} {created}  {details}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Suppress every valid number of a file; name the lines that hold none."""
    with store_in_use() as store:
        try:
            result = import_file(
                store.suppressions,
                args.organization_id,
                args.file,
                args.scope,
                args.reason,
                f"import {args.file.name} by {operator()}",
            )
        except SuppressionFileError as error:
            raise CliError(f"{error}; nothing was added") from None
    out(
        f"organization {args.organization_id} from {args.file}: {result.added} added, "
        f"{result.present} already present, {len(result.rejected)} rejected"
    )
    for rejected in result.rejected[:REJECTED_SHOWN]:
        err(f"{PROG}: {args.file}: line {rejected.line}: {rejected.reason}")
    if len(result.rejected) > REJECTED_SHOWN:
        err(f"{PROG}: {args.file}: ... and {len(result.rejected) - REJECTED_SHOWN} more")
    return SOME_REJECTED if result.rejected else 0


def add_commands(commands: Commands, parents: ParentParsers) -> None:
    """Add `suppress` and its subcommands."""
    with_organization = organization_subcommands(
        commands,
        parents,
        "suppress",
        "numbers an organization never messages (opt-outs)",
        "Manage an organization's suppression list in CAMPAIGN_DATABASE_URL. A run does not "
        "queue a recipient whose number is on it for the campaign's organization (scope 'all', "
        "or 'marketing' for a marketing campaign): it ends failed with failure_code "
        "'opted_out'. Numbers are E.164 (+ and 8 to 15 digits).",
    )

    def with_scope(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--scope",
            choices=SCOPES,
            default=DEFAULT_SCOPE,
            help="marketing: no marketing campaign messages them; all: no campaign does "
            f"(default {DEFAULT_SCOPE})",
        )
        parser.add_argument("--reason", help="why, for the record (one line)")

    add = with_organization("add", "suppress numbers; one malformed number changes nothing")
    add.add_argument("phone_numbers", metavar="PHONE", nargs="+")
    with_scope(add)
    add.set_defaults(handler=cmd_add)

    remove = with_organization("remove", "take numbers off the list")
    remove.add_argument("phone_numbers", metavar="PHONE", nargs="+")
    remove.set_defaults(handler=cmd_remove)

    listing = with_organization("list", "show the organization's suppressed numbers")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    listing.set_defaults(handler=cmd_list)

    importing = with_organization(
        "import",
        "suppress the numbers of a file: a CSV with a phone_number column, or one per line; "
        "exit status 1 when some lines were rejected (the others are added)",
    )
    importing.add_argument("file", metavar="FILE", type=Path)
    with_scope(importing)
    importing.set_defaults(handler=cmd_import)
