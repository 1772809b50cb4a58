"""`frequency-cap set|clear|show`: an organization's own frequency cap, beside the default.

`CAMPAIGN_FREQUENCY_CAP` (`N/DURATION`, e.g. `1/24h`) holds for every organization without its
own. A marketing campaign does not queue a recipient whose number already had N marketing
messages from its organization within the duration: it ends `failed`, `frequency_capped`.
"""

import argparse

from campaign_pipeline.cli.common import (
    CliError,
    Commands,
    ParentParsers,
    organization_subcommands,
    out,
    pretty,
    store_in_use,
)
from campaign_pipeline.frequency_caps import CAP_FORM, OFF, effective_cap, parse_frequency_cap
from campaign_pipeline.services.suppressions import check_organization_id
from campaign_pipeline.settings import campaign_frequency_cap


def cmd_set(args: argparse.Namespace) -> int:
    """Give the organization its own cap, or `off`."""
    organization_id = check_organization_id(args.organization_id)
    cap = args.cap.strip()
    if cap != OFF:
        try:
            cap = parse_frequency_cap(cap).text
        except ValueError:
            raise CliError(f"a frequency cap must be {CAP_FORM}, or {OFF}; not {cap!r}") from None
    with store_in_use() as store:
        store.organizations.set_frequency_cap(organization_id, cap)
    shown = "no frequency cap" if cap == OFF else f"frequency cap {cap}"
    out(f"organization {organization_id}: {shown}")
    return 0


def cmd_clear(args: argparse.Namespace) -> int:
    """Take the organization's own cap away: the default holds again."""
    organization_id = check_organization_id(args.organization_id)
    default = campaign_frequency_cap()
    with store_in_use() as store:
        store.organizations.set_frequency_cap(organization_id, None)
    shown = f"the default, {default}" if default else "the default: no frequency cap"
    out(f"organization {organization_id}: {shown}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """The cap that holds for the organization's marketing campaigns, and where it comes from."""
    organization_id = check_organization_id(args.organization_id)
    default = campaign_frequency_cap()
    with store_in_use() as store:
        own = store.organizations.frequency_cap(organization_id)
    cap, source = effective_cap(own, default)
    if args.json:
        out(
            pretty(
                {
                    "organization_id": organization_id,
                    "frequency_cap": cap.text if cap else None,
                    "source": source,
                    "default": default.text if default else None,
                }
            )
        )
        return 0
    where = "its own" if source == "organization" else "CAMPAIGN_FREQUENCY_CAP"
    if cap is None:
        why = "its own: off" if source == "organization" else "CAMPAIGN_FREQUENCY_CAP is unset"
        out(f"organization {organization_id}: no frequency cap ({why})")
        return 0
    out(
        f"organization {organization_id}: at most {cap.messages} marketing "
        f"message{'' if cap.messages == 1 else 's'} per number within {cap.window} "
        f"({cap}, {where})"
    )
    return 0


def add_commands(commands: Commands, parents: ParentParsers) -> None:
    """Add `frequency-cap` and its subcommands."""
    with_organization = organization_subcommands(
        commands,
        parents,
        "frequency-cap",
        "how many marketing messages one person may get from an organization",
        "An organization's own frequency cap in CAMPAIGN_DATABASE_URL; without one, "
        "CAMPAIGN_FREQUENCY_CAP holds (unset: no cap). A marketing campaign does not queue a "
        "recipient whose number already had N marketing messages from the organization within "
        "DURATION: it ends failed with failure_code 'frequency_capped'.",
    )
    setting = with_organization("set", "give the organization its own cap")
    setting.add_argument(
        "cap",
        metavar="CAP",
        help="N/DURATION (DURATION: an integer with s, m, h or d; e.g. 1/24h, 3/7d), or off",
    )
    setting.set_defaults(handler=cmd_set)
    clearing = with_organization("clear", "take its own cap away: CAMPAIGN_FREQUENCY_CAP holds")
    clearing.set_defaults(handler=cmd_clear)
    showing = with_organization("show", "show the cap that holds and where it comes from")
    showing.add_argument("--json", action="store_true", help="print a JSON object")
    showing.set_defaults(handler=cmd_show)
