"""The commands that change things: `init-db`, `process` (a run here), `trigger` (one there)."""

import argparse
import os
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa

from campaign_pipeline.cli.common import (
    PROG,
    QUEUE_URL_VARIABLE,
    REGION_VARIABLE,
    CliError,
    Commands,
    ParentParsers,
    database_reason,
    display_database_url,
    ensure_dagster_home,
    err,
    failure_description,
    log_level,
    open_queue,
    open_store,
    out,
    parse_campaign_id,
    sqlite_file,
    whole_number,
    with_console_log_level,
)
from campaign_pipeline.defs.tags import JOB_NAME, STOPPED_TAG
from campaign_pipeline.errors import CampaignScheduled, CampaignStopped
from campaign_pipeline.lifecycle import refusal
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.sending.stats import merge_stats
from campaign_pipeline.store.engine import DATABASE_URL_VARIABLE, default_database_url

# libpq's default is to wait about two minutes for a server that does not answer.
POSTGRES_CONNECT_TIMEOUT_SECONDS = "10"
NOW_HELP = "start a campaign scheduled for later (send_at ahead) now"


def cmd_init_db(args: argparse.Namespace) -> int:
    """Create the campaign tables that do not exist yet."""
    os.environ.setdefault("PGCONNECT_TIMEOUT", POSTGRES_CONNECT_TIMEOUT_SECONDS)
    url = default_database_url()
    shown = display_database_url(url)
    database_file = sqlite_file(url)
    if database_file is not None:
        home = os.environ.get("DAGSTER_HOME", "").strip()
        if home and database_file.parent == Path(home) and not Path(home).is_dir():
            # The default store lives in $DAGSTER_HOME: made here, it is made a whole instance
            # (dagster.yaml, telemetry off), as `process` would make it.
            ensure_dagster_home(Path(home))
        database_file.parent.mkdir(parents=True, exist_ok=True)
    store = CampaignStore(database_url=url)
    try:
        store.create_schema()
    except (sa.exc.SQLAlchemyError, ValueError) as error:
        raise CliError(f"cannot create the schema in {shown}: {database_reason(error)}") from None
    store.engine.dispose()
    out(f"Campaign database ready: {shown}")
    return 0


def cmd_process(args: argparse.Namespace) -> int:
    """Check everything a run needs, run the job for one campaign here, print its summary."""
    campaign_id = parse_campaign_id(args.campaign_id)
    os.environ.setdefault("PGCONNECT_TIMEOUT", POSTGRES_CONNECT_TIMEOUT_SECONDS)
    url = default_database_url()
    # Pin the database before DAGSTER_HOME may change below: the run must use the one checked
    # here (and the one `init-db` made), which the default derives from DAGSTER_HOME.
    os.environ[DATABASE_URL_VARIABLE] = url
    shown = display_database_url(url)
    store = open_store(url)
    try:
        campaign = store.campaigns.get(campaign_id)
        if campaign is None:
            raise CliError(f"campaign {campaign_id} does not exist in {shown}")
        refused = refusal(campaign, send_now=args.now)
        # An operator's decision (paused, cancelled, later) is said here; any other refusal
        # is the claim's, which fails the run with it.
        if isinstance(refused, CampaignStopped | CampaignScheduled):
            raise CliError(str(refused))
    except sa.exc.SQLAlchemyError as error:
        raise CliError(f"cannot read campaigns from {shown}: {database_reason(error)}") from None
    finally:
        store.engine.dispose()
    open_queue()
    ensure_dagster_home(Path(".dagster"))

    from campaign_pipeline.definitions import defs  # importing it reads the settings
    from campaign_pipeline.defs.executor import CAMPAIGN_EXECUTOR
    from campaign_pipeline.defs.jobs import campaign_run_config
    from campaign_pipeline.defs.partitions import campaign_partitions
    from campaign_pipeline.defs.tags import campaign_tags
    from campaign_pipeline.settings import campaign_send_processes

    job = defs.get_job_def(JOB_NAME)
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(str(campaign_partitions.name), [campaign_id])
        config_fields: dict[str, Any] = {"send_now": True} if args.now else {}
        # Under Celery the steps run on the workers, as many at once as the sensor's runs take.
        processes = campaign_send_processes() if CAMPAIGN_EXECUTOR == "celery" else 1
        run_config = with_console_log_level(
            campaign_run_config(campaign_id, processes, **config_fields), log_level(args)
        )
        if args.max_concurrent_batches:
            # Configuring a resource at launch takes all its required fields, as variable names.
            sqs_config = {
                "queue_url": {"env": QUEUE_URL_VARIABLE},
                "region_name": {"env": REGION_VARIABLE},
                "max_concurrent_batches": args.max_concurrent_batches,
            }
            run_config["resources"] = {"sqs_queue": {"config": sqs_config}}
        tags = campaign_tags(campaign_id, campaign["organization_id"], campaign["name"])
        if CAMPAIGN_EXECUTOR != "celery":
            result = job.execute_in_process(
                run_config=run_config,
                tags=tags,
                instance=instance,
                partition_key=campaign_id,
                raise_on_error=False,
            )
            return _report_run(instance, result, campaign_id)
        # The workers load the job from the code location, as the run here does.
        with dg.execute_job(
            dg.build_reconstructable_job("campaign_pipeline.definitions", "campaign_job"),
            instance=instance,
            run_config=run_config,
            tags={**tags, "dagster/partition": campaign_id},
            raise_on_error=False,
        ) as job_result:
            return _report_run(instance, job_result, campaign_id)


def _report_run(
    instance: dg.DagsterInstance,
    result: dg.ExecuteInProcessResult | dg.JobExecutionResult,
    campaign_id: str,
) -> int:
    """Print the run's summary (or why it failed, in one line); the exit status."""
    run = instance.get_run_by_id(result.run_id)
    stopped = dict(run.tags) if run else {}
    if not result.success:
        err(f"{PROG}: run {result.run_id} failed in {failure_description(result)}")
        return 1
    if not result.is_node_success("complete_campaign"):
        # The campaign was paused, cancelled or rescheduled between the check and the claim.
        reason = stopped.get(STOPPED_TAG, "the campaign was left alone")
        out(f"run {result.run_id} campaign {campaign_id}: nothing sent: {reason}")
        return 0
    counts = result.output_for_node("complete_campaign")
    stats = merge_stats(result.output_for_node("send_campaign_messages").values())
    stopped_by = f"; stopped: {stats.stopped}" if stats.stopped else ""
    # What this run did, then the campaign's totals: a rerun of a finished campaign does
    # nothing, which its line must not hide behind the campaign's numbers.
    out(
        f"run {result.run_id} campaign {campaign_id}: this run queued {stats.queued} and "
        f"failed {stats.failed} in {stats.seconds:.2f} s ({stats.messages_per_second:.1f} "
        f"messages/s); the campaign: {counts['ready_to_send']} queued, {counts['failed']} "
        f"failed, {counts['pending']} pending{stopped_by}"
    )
    return 0


def cmd_trigger(args: argparse.Namespace) -> int:
    """Launch process_campaign_messages for one campaign through the webserver's GraphQL API."""
    # dagster-graphql is only needed here
    from campaign_pipeline.services import dagster_client, trigger

    campaign_id = trigger.campaign_id_or_error(args.campaign_id)
    url = (
        args.dagster_url
        or os.environ.get(dagster_client.DAGSTER_URL_VARIABLE)
        or dagster_client.DEFAULT_DAGSTER_URL
    )
    webserver = dagster_client.DagsterWebserver(url, dict(args.header))
    database_url = default_database_url()
    store = open_store(database_url)
    try:
        return trigger.trigger(
            store,
            webserver,
            campaign_id,
            wait=args.wait,
            send_now=args.now,
            out=out,
            err=_err_prefixed,
        )
    except sa.exc.SQLAlchemyError as error:
        shown = display_database_url(database_url)
        raise CliError(f"cannot read campaigns from {shown}: {database_reason(error)}") from None
    finally:
        store.engine.dispose()


def _err_prefixed(text: str) -> None:
    err(f"{PROG}: {text}")


def _header(text: str) -> tuple[str, str]:
    from campaign_pipeline.services.dagster_client import parse_header

    try:
        return parse_header(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_commands(commands: Commands, parents: ParentParsers) -> None:
    """Add `init-db`, `process` and `trigger`."""
    init_db = commands.add_parser(
        "init-db",
        parents=[parents.common],
        help="create the campaign tables (safe to repeat)",
        description="Create the campaign tables in CAMPAIGN_DATABASE_URL (default: campaigns.db "
        "in $DAGSTER_HOME, else the working directory). Existing tables are kept.",
    )
    init_db.set_defaults(handler=cmd_init_db)

    process = commands.add_parser(
        "process",
        parents=[parents.common, parents.verbose],
        help="queue one campaign's messages now",
        description="Run process_campaign_messages for one campaign in this process, recorded "
        "in the Dagster instance at $DAGSTER_HOME (default ./.dagster).",
    )
    process.add_argument("campaign_id", metavar="CAMPAIGN_ID", help="UUID of the campaign")
    process.add_argument(
        "--max-concurrent-batches",
        type=whole_number(1, 256),
        help="SendMessageBatch calls in flight at once (default: the resource's, 64)",
    )
    process.add_argument("--now", action="store_true", help=NOW_HELP)
    process.set_defaults(handler=cmd_process)

    trigger = commands.add_parser(
        "trigger",
        parents=[parents.common],
        help="start a campaign's run through the Dagster webserver (GraphQL)",
        description="Launch process_campaign_messages for one campaign through the Dagster "
        "webserver's GraphQL API, with the sensor's run config and tags, and print the run's "
        "id and UI link. Refused, with exit status 2, for an unknown campaign, one whose status "
        "cannot be processed (paused, cancelled, ...), one scheduled for later (without --now), "
        "or one with a run already queued or running. The campaign is read "
        "from CAMPAIGN_DATABASE_URL.",
    )
    trigger.add_argument("campaign_id", metavar="CAMPAIGN_ID", help="UUID of the campaign")
    trigger.add_argument(
        "--dagster-url",
        metavar="URL",
        help="the webserver (default $DAGSTER_URL, else http://127.0.0.1:3000)",
    )
    trigger.add_argument(
        "--header",
        type=_header,
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="HTTP header for a proxy in front of the webserver, e.g. 'Authorization: Bearer "
        "...' (repeatable)",
    )
    trigger.add_argument(
        "--wait",
        action="store_true",
        help="follow the run to its end; exit status 1 if it failed or was canceled",
    )
    trigger.add_argument("--now", action="store_true", help=NOW_HELP)
    trigger.set_defaults(handler=cmd_trigger)
