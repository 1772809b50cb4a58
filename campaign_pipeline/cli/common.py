"""What the command modules share: output, errors, opening the store and the queue, Dagster runs.

A command module adds its subcommands with `add_commands(commands, parents)`, taking the shared
options from `ParentParsers`.
"""

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import botocore.exceptions
import dagster as dg
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import SqsQueue
from campaign_pipeline.store.engine import default_database_url
from campaign_pipeline.text import (
    canonical_campaign_id,
    database_reason,
    display_database_url,
    one_line,
)

PROG = "campaign-pipeline"
QUEUE_URL_VARIABLE = "AWS_SQS_QUEUE_URL"
REGION_VARIABLE = "AWS_REGION"
SCHEMA_TABLES = ("campaigns", "campaign_audience")
# GetQueueAttributes on a missing queue: the query protocol's code, then the JSON protocol's.
NONEXISTENT_QUEUE_CODES = frozenset(
    {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
)

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""The subcommands of the global parser, which each command module adds to."""


@dataclass(frozen=True)
class ParentParsers:
    """Options several subcommands take, as parents for `add_parser`.

    Attributes:
        common: `--debug`, which every subcommand takes.
        verbose: `-v/--verbose`, for the commands that run Dagster jobs here.
    """

    common: argparse.ArgumentParser
    verbose: argparse.ArgumentParser


class CliError(Exception):
    """A problem the user can fix, reported as one line with exit status 2."""


def out(text: str = "") -> None:
    """Write a line to stdout now, so it is not held back behind a run's output."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def err(text: str) -> None:
    """Write a line to stderr now."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def pretty(value: Any) -> str:
    """`value` as indented JSON, non-ASCII text kept readable."""
    return json.dumps(value, indent=2, ensure_ascii=False)


def sqlite_file(url: str) -> Path | None:
    """The file of a plain SQLite URL, else None (other databases, memory, `file:` URIs)."""
    try:
        parsed = make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        return None
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:") or parsed.query.get("uri"):
        return None
    return Path(database)


def open_store(url: str) -> CampaignStore:
    """A store on `url` once the database answers and has the pipeline's tables."""
    shown = display_database_url(url)
    init_hint = f"run `{PROG} init-db` first"
    database_file = sqlite_file(url)
    # Connecting would create an empty SQLite file; say what is missing instead.
    if database_file is not None and not database_file.exists():
        raise CliError(f"the campaign database {shown} does not exist; {init_hint}")
    store = CampaignStore(database_url=url)
    try:
        with store.engine.connect() as connection:
            inspector = sa.inspect(connection)
            missing = [table for table in SCHEMA_TABLES if not inspector.has_table(table)]
    except (sa.exc.ArgumentError, ValueError) as error:
        raise CliError(
            f"the campaign database URL {shown} is not usable: {database_reason(error)}"
        ) from None
    except sa.exc.SQLAlchemyError as error:
        raise CliError(
            f"cannot reach the campaign database {shown}: {database_reason(error)}"
        ) from None
    if missing:
        store.engine.dispose()
        raise CliError(
            f"the campaign database {shown} has no {' or '.join(missing)} table; {init_hint}"
        )
    return store


def organization_subcommands(
    commands: Commands, parents: ParentParsers, name: str, summary: str, description: str
) -> Callable[[str, str], argparse.ArgumentParser]:
    """Add the command `name`; returns a maker of its subcommands, each on an ORGANIZATION_ID."""
    parser = commands.add_parser(
        name, parents=[parents.common], help=summary, description=description
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    def with_organization(action: str, action_summary: str) -> argparse.ArgumentParser:
        subcommand = actions.add_parser(
            action,
            parents=[parents.common],
            help=action_summary,
            description=action_summary + ".",
        )
        subcommand.add_argument("organization_id", metavar="ORGANIZATION_ID")
        return subcommand

    return with_organization


@contextmanager
def store_in_use(doing: str = "use") -> Iterator[CampaignStore]:
    """The store in CAMPAIGN_DATABASE_URL, closed afterwards.

    A database that fails is one line: `cannot {doing} {url}: {why}`.
    """
    url = default_database_url()
    store = open_store(url)
    try:
        yield store
    except sa.exc.SQLAlchemyError as error:
        raise CliError(
            f"cannot {doing} {display_database_url(url)}: {database_reason(error)}"
        ) from None
    finally:
        store.engine.dispose()


def open_queue(queue_url: str | None = None) -> SqsQueue:
    """The configured queue, once SQS has answered for it."""
    queue_url = (queue_url or os.environ.get(QUEUE_URL_VARIABLE, "")).strip()
    region = os.environ.get(REGION_VARIABLE, "").strip()
    missing = [
        name
        for name, value in ((QUEUE_URL_VARIABLE, queue_url), (REGION_VARIABLE, region))
        if not value
    ]
    if missing:
        raise CliError(
            f"missing configuration: set {' and '.join(missing)} "
            "(the SQS queue the messages go to, and its AWS region)"
        )
    # Two attempts: a check should answer quickly; runs use the resource's own retry budget.
    queue = SqsQueue(queue_url=queue_url, region_name=region, max_attempts=2)
    try:
        endpoint = queue.client.meta.endpoint_url
    except ValueError as error:  # botocore rejects a malformed endpoint override here
        raise CliError(f"the SQS endpoint is not usable: {one_line(error)}") from None
    where = f"queue {queue_url} (endpoint {endpoint})"
    try:
        queue.batch_queue().max_message_bytes()
    except botocore.exceptions.ClientError as error:
        details = error.response.get("Error", {})
        code = details.get("Code", "Unknown")
        if code in NONEXISTENT_QUEUE_CODES:
            raise CliError(f"{where} does not exist") from None
        status = str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "?"))
        reason = one_line(details.get("Message") or "") or f"HTTP {status} without a message"
        label = "" if code == status else f"{code}: "
        raise CliError(f"SQS refused {where}: {label}{reason}") from None
    except KeyError:
        raise CliError(f"{where} answered without the queue's attributes; is it SQS?") from None
    except botocore.exceptions.NoCredentialsError:
        raise CliError(
            "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
        ) from None
    except botocore.exceptions.ConnectionError as error:
        raise CliError(f"cannot reach {where}: {one_line(error)}") from None
    except botocore.exceptions.BotoCoreError as error:
        raise CliError(f"cannot use {where}: {one_line(error)}") from None
    return queue


def ensure_dagster_home(default: Path) -> Path:
    """Use $DAGSTER_HOME, else `default`: made absolute (Dagster requires it) and created."""
    raw = os.environ.get("DAGSTER_HOME", "").strip()
    home = (Path(raw).expanduser() if raw else default).resolve()
    if not home.is_dir():
        home.mkdir(parents=True)
        # Dagster's defaults, without its notice that no dagster.yaml exists, and without its
        # telemetry (and the banner announcing it) for an instance this command made.
        (home / "dagster.yaml").write_text(
            "# Dagster instance settings; Dagster's defaults but for telemetry.\n"
            "telemetry:\n  enabled: false\n"
        )
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def with_console_log_level(run_config: Any, level: str) -> dict[str, Any]:
    """`run_config` as a dict, with Dagster's console log at `level`.

    The run's events are stored in the instance whatever the console shows.
    """
    if isinstance(run_config, dg.RunConfig):
        config = run_config.to_config_dict()
    else:
        config = dict(run_config or {})
    config["loggers"] = {
        **(config.get("loggers") or {}),
        "console": {"config": {"log_level": level}},
    }
    return config


def log_level(args: argparse.Namespace) -> str:
    """Dagster's console log level for a run here: INFO with `--verbose`, else CRITICAL."""
    # A step failure is logged at ERROR with its stack trace; by default the CLI prints it as one
    # line instead.
    return "INFO" if args.verbose else "CRITICAL"


def failure_description(result: dg.ExecuteInProcessResult | dg.JobExecutionResult) -> str:
    """One line on why a run failed: its failed step's description or error."""
    for event in result.get_step_failure_events():
        data = event.step_failure_data
        user = data.user_failure_data
        text = (
            user.description if user and user.description else (data.error and data.error.message)
        )
        return f"step {event.step_key}: {one_line(text or 'no description')}"
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.RUN_FAILURE:
            # An executor's own error (a Celery broker that does not answer, say) says why.
            error = getattr(event.event_specific_data, "error", None)
            if error is None:
                return one_line(event.message or "the run failed")
            reason = error.message.split(": ", 1)[-1] if error.cls_name else error.message
            return f"the executor: {one_line(reason)}"
    return "the run failed; see it in the Dagster UI"


def parse_campaign_id(raw: str) -> str:
    """The campaign id in canonical UUID form; a CliError naming it if it is not one."""
    try:
        return canonical_campaign_id(raw)
    except ValueError as error:
        raise CliError(str(error)) from None


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse `type` for a whole number from `low` to `high` (no upper bound if None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, not {value}")
        return value

    return parse
