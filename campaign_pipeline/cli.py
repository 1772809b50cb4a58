"""The `campaign-pipeline` command: set up the database, process a campaign, show the queue, demo.

Output is this module's product, so it writes to stdout and stderr itself. Problems a person can
fix (a bad id, an unreachable database or queue, missing settings) are one line on stderr and exit
status 2; a failed run is one line and status 1; anything unexpected is one line and status 1,
with the traceback only under `--debug`. `sqs-status` prints its report either way and exits 1
when the queue does not answer, 2 when SQS is not configured.
"""

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import boto3
import botocore.exceptions
import dagster as dg
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from campaign_pipeline.demo import (
    DEMO_QUEUE_NAME,
    DemoError,
    local_sqs_server,
    port_is_open,
    reset_demo_database,
    seed_demo_campaigns,
    stop_process,
)
from campaign_pipeline.dispatch import merge_stats
from campaign_pipeline.resources.campaign_store import (
    DATABASE_URL_VARIABLE,
    CampaignStore,
    default_database_url,
)
from campaign_pipeline.resources.sqs_queue import SqsQueue
from campaign_pipeline.settings import SettingsError, campaign_processing_interval_seconds
from campaign_pipeline.sqs_status import sqs_status_from_environment
from campaign_pipeline.text import canonical_campaign_id, one_line

PROG = "campaign-pipeline"
JOB_NAME = "process_campaign_messages"
QUEUE_URL_VARIABLE = "AWS_SQS_QUEUE_URL"
REGION_VARIABLE = "AWS_REGION"
SCHEMA_TABLES = ("campaigns", "campaign_audience")
# GetQueueAttributes on a missing queue: the query protocol's code, then the JSON protocol's.
NONEXISTENT_QUEUE_CODES = frozenset(
    {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
)
DEMO_REGION = "us-east-1"
DEMO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo"}
# libpq's default is to wait about two minutes for a server that does not answer.
POSTGRES_CONNECT_TIMEOUT_SECONDS = "10"


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


class CliError(Exception):
    """A problem the user can fix, reported as one line with exit status 2."""


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def display_database_url(url: str) -> str:
    """The database URL with any password replaced by `***`."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        return "<unparsable database URL>"


def _database_reason(error: Exception) -> str:
    original = getattr(error, "orig", None)
    text = str(original if original is not None else error)
    return one_line(text.split("(Background on this error")[0])


def _sqlite_file(url: str) -> Path | None:
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


def _open_store(url: str) -> CampaignStore:
    """A store on `url` once the database answers and has the pipeline's tables."""
    shown = display_database_url(url)
    init_hint = f"run `{PROG} init-db` first"
    sqlite_file = _sqlite_file(url)
    # Connecting would create an empty SQLite file; say what is missing instead.
    if sqlite_file is not None and not sqlite_file.exists():
        raise CliError(f"the campaign database {shown} does not exist; {init_hint}")
    store = CampaignStore(database_url=url)
    try:
        with store.engine.connect() as connection:
            inspector = sa.inspect(connection)
            missing = [table for table in SCHEMA_TABLES if not inspector.has_table(table)]
    except (sa.exc.ArgumentError, ValueError) as error:
        raise CliError(
            f"the campaign database URL {shown} is not usable: {_database_reason(error)}"
        ) from None
    except sa.exc.SQLAlchemyError as error:
        raise CliError(
            f"cannot reach the campaign database {shown}: {_database_reason(error)}"
        ) from None
    if missing:
        store.engine.dispose()
        raise CliError(
            f"the campaign database {shown} has no {' or '.join(missing)} table; {init_hint}"
        )
    return store


def _open_queue(queue_url: str | None = None) -> SqsQueue:
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
        queue.max_message_bytes()
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


def _ensure_dagster_home(default: Path) -> Path:
    """Use $DAGSTER_HOME, else `default`: made absolute (Dagster requires it) and created."""
    raw = os.environ.get("DAGSTER_HOME", "").strip()
    home = (Path(raw).expanduser() if raw else default).resolve()
    if not home.is_dir():
        home.mkdir(parents=True)
        # An empty dagster.yaml means the defaults, without Dagster's notice that none exists.
        (home / "dagster.yaml").write_text("# Dagster instance settings; empty: the defaults.\n")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def _with_console_log_level(run_config: Any, level: str) -> dict[str, Any]:
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


def _log_level(args: argparse.Namespace) -> str:
    # A step failure is logged at ERROR with its stack trace; by default the CLI prints it as one
    # line instead.
    return "INFO" if args.verbose else "CRITICAL"


def _failure_description(result: dg.ExecuteInProcessResult) -> str:
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
            return one_line(event.message or "the run failed")
    return "the run failed; see it in the Dagster UI"


def _campaign_id(raw: str) -> str:
    try:
        return canonical_campaign_id(raw)
    except ValueError as error:
        raise CliError(str(error)) from None


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


def _body(message: dict[str, Any]) -> Any:
    try:
        return json.loads(message["Body"])
    except (json.JSONDecodeError, TypeError):
        return message["Body"]


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def cmd_init_db(args: argparse.Namespace) -> int:
    """Create the campaign tables that do not exist yet."""
    os.environ.setdefault("PGCONNECT_TIMEOUT", POSTGRES_CONNECT_TIMEOUT_SECONDS)
    url = default_database_url()
    shown = display_database_url(url)
    sqlite_file = _sqlite_file(url)
    if sqlite_file is not None:
        sqlite_file.parent.mkdir(parents=True, exist_ok=True)
    store = CampaignStore(database_url=url)
    try:
        store.create_schema()
    except (sa.exc.SQLAlchemyError, ValueError) as error:
        raise CliError(f"cannot create the schema in {shown}: {_database_reason(error)}") from None
    store.engine.dispose()
    _out(f"Campaign database ready: {shown}")
    return 0


def cmd_process(args: argparse.Namespace) -> int:
    """Check everything a run needs, run the job for one campaign here, print its summary."""
    campaign_id = _campaign_id(args.campaign_id)
    os.environ.setdefault("PGCONNECT_TIMEOUT", POSTGRES_CONNECT_TIMEOUT_SECONDS)
    url = default_database_url()
    # Pin the database before DAGSTER_HOME may change below: the run must use the one checked
    # here (and the one `init-db` made), which the default derives from DAGSTER_HOME.
    os.environ[DATABASE_URL_VARIABLE] = url
    shown = display_database_url(url)
    store = _open_store(url)
    try:
        campaign = store.get_campaign(campaign_id)
    except sa.exc.SQLAlchemyError as error:
        raise CliError(f"cannot read campaigns from {shown}: {_database_reason(error)}") from None
    finally:
        store.engine.dispose()
    if campaign is None:
        raise CliError(f"campaign {campaign_id} does not exist in {shown}")
    _open_queue()
    _ensure_dagster_home(Path(".dagster"))

    from campaign_pipeline.definitions import defs  # importing it reads the settings
    from campaign_pipeline.jobs import campaign_run_config, campaign_tags

    job = defs.get_job_def(JOB_NAME)
    with dg.DagsterInstance.get() as instance:
        run_config = _with_console_log_level(campaign_run_config(campaign_id), _log_level(args))
        if args.max_concurrent_batches:
            # Configuring a resource at launch takes all its required fields, as variable names.
            sqs_config = {
                "queue_url": {"env": QUEUE_URL_VARIABLE},
                "region_name": {"env": REGION_VARIABLE},
                "max_concurrent_batches": args.max_concurrent_batches,
            }
            run_config["resources"] = {"sqs_queue": {"config": sqs_config}}
        result = job.execute_in_process(
            run_config=run_config,
            tags=campaign_tags(campaign_id, campaign["organization_id"]),
            instance=instance,
            raise_on_error=False,
        )
    if not result.success:
        _err(f"{PROG}: run {result.run_id} failed in {_failure_description(result)}")
        return 1
    counts = result.output_for_node("complete_campaign")
    stats = merge_stats(result.output_for_node("send_campaign_messages").values())
    _out(
        f"run {result.run_id} campaign {campaign_id}: {counts['ready_to_send']} queued, "
        f"{counts['failed']} failed, {counts['pending']} pending in {stats.seconds:.2f} s "
        f"({stats.messages_per_second:.1f} messages/s)"
    )
    return 0


def cmd_messages(args: argparse.Namespace) -> int:
    """Print messages waiting in the queue as a JSON list, without consuming them."""
    queue = _open_queue(args.queue_url)
    total = queue.attributes().get("ApproximateNumberOfMessages", "?")
    messages = peek_messages(queue.client, queue.queue_url, args.limit)
    _err(
        f"{len(messages)} of about {total} messages in {queue.queue_url} "
        "(received with VisibilityTimeout=0: still in the queue)"
    )
    _out(_pretty([_body(message) for message in messages]))
    return 0


def cmd_sqs_status(args: argparse.Namespace) -> int:
    """Print the queue's configuration and attributes; 1 if it does not answer, 2 if unset."""
    status = sqs_status_from_environment()
    _out(_pretty(status.as_dict()) if args.json else status.format_table())
    if status.error:
        _err(f"{PROG}: error: {status.error}")
    if not status.configured:
        return 2
    return 0 if status.reachable else 1


def cmd_trigger(args: argparse.Namespace) -> int:
    """Launch process_campaign_messages for one campaign through the webserver's GraphQL API."""
    from campaign_pipeline import trigger  # dagster-graphql is only needed here

    try:
        campaign_id = trigger.campaign_id_or_error(args.campaign_id)
        url = (
            args.dagster_url
            or os.environ.get(trigger.DAGSTER_URL_VARIABLE)
            or trigger.DEFAULT_DAGSTER_URL
        )
        webserver = trigger.DagsterWebserver(url, dict(args.header))
        database_url = default_database_url()
        store = _open_store(database_url)
        try:
            return trigger.trigger(
                store, webserver, campaign_id, wait=args.wait, out=_out, err=_err_prefixed
            )
        except sa.exc.SQLAlchemyError as error:
            shown = display_database_url(database_url)
            raise CliError(
                f"cannot read campaigns from {shown}: {_database_reason(error)}"
            ) from None
        finally:
            store.engine.dispose()
    except trigger.TriggerError as error:
        raise CliError(str(error)) from None


def _err_prefixed(text: str) -> None:
    _err(f"{PROG}: {text}")


def _header(text: str) -> tuple[str, str]:
    from campaign_pipeline.trigger import parse_header

    try:
        return parse_header(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _own_command() -> str:
    """How to run this command again from a shell: its name if on PATH, else its full path."""
    script = Path(sys.executable).parent / PROG
    found = shutil.which(PROG)
    if script.exists():
        if found and os.path.samefile(found, script):
            return PROG
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m campaign_pipeline.cli"


def _demo_table(store: CampaignStore, campaign_ids: Sequence[str]) -> list[str]:
    header = ("campaign", "type", "status", "queued", "failed", "pending")
    rows: list[tuple[str, ...]] = [header]
    for campaign_id in campaign_ids:
        campaign = store.get_campaign(campaign_id) or {}
        rows.append(
            (
                str(campaign.get("name", campaign_id)),
                str(campaign.get("message_type", "?")),
                str(campaign.get("status", "?")),
                *(str(campaign.get(f"{k}_count", "?")) for k in ("queued", "failed", "pending")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return [
        "  ".join(
            cell.ljust(width) if i < 3 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def _demo_once(args: argparse.Namespace, campaign_ids: Sequence[str], queue_url: str) -> int:
    """Process the demo campaigns here, through the sensor and the job, and print what happened."""
    from campaign_pipeline.definitions import defs  # importing it reads the settings
    from campaign_pipeline.sensors import asset_generated_campaigns_sensor

    job = defs.get_job_def(JOB_NAME)
    store = CampaignStore()
    reasons: Counter[str] = Counter()
    failures: list[str] = []
    started = time.perf_counter()
    processed: set[str] = set()
    with (
        dg.DagsterInstance.get() as instance,
        dg.build_sensor_context(instance=instance, resources={"campaign_store": store}) as context,
    ):
        # One tick normally takes every campaign; more only when CAMPAIGN_BATCH_SIZE is small.
        while True:
            evaluation = asset_generated_campaigns_sensor(context)
            requests = [
                request
                for request in getattr(evaluation, "run_requests", None) or []
                if request.tags["campaign_id"] not in processed
            ]
            if not requests:
                break
            for request in requests:
                processed.add(request.tags["campaign_id"])
                result = job.execute_in_process(
                    run_config=_with_console_log_level(request.run_config, _log_level(args)),
                    tags=request.tags,
                    instance=instance,
                    raise_on_error=False,
                )
                if result.success:
                    stats = merge_stats(result.output_for_node("send_campaign_messages").values())
                    reasons.update(stats.failed_by_reason)
                else:
                    failures.append(f"run {result.run_id} failed in {_failure_description(result)}")
    seconds = time.perf_counter() - started
    _out(f"\n{len(processed)} runs in {seconds:.1f} s:\n")
    for line in _demo_table(store, campaign_ids):
        _out(f"  {line}")
    _out("\nTop failure reasons:")
    for reason, count in reasons.most_common(10) or [("none", 0)]:
        _out(f"  {count:>3}  {reason}" if count else f"  {reason}")
    queue = SqsQueue(queue_url=queue_url, region_name=DEMO_REGION)
    messages = peek_messages(queue.client, queue_url, 3)
    _out(f"\nFirst {len(messages)} messages in {DEMO_QUEUE_NAME}:")
    for message in messages:
        _out(_pretty(_body(message)))
    _out(
        f"\nThe runs are in the Dagster instance at {os.environ['DAGSTER_HOME']}; browse them with "
        f"`DAGSTER_HOME={shlex.quote(os.environ['DAGSTER_HOME'])} dagster dev "
        "-m campaign_pipeline.definitions`."
    )
    store.engine.dispose()
    for failure in failures:
        _err(f"{PROG}: {failure}")
    return 1 if failures else 0


def _demo_dev(port: int, endpoint: str, queue_url: str) -> int:
    """Run `dagster dev` on the demo's environment until it exits or Ctrl-C stops it."""
    os.environ.setdefault("CAMPAIGN_PROCESSING_INTERVAL", "5000")
    interval = campaign_processing_interval_seconds()  # a bad value fails here, not in dagster dev
    command = [sys.executable, "-m", "dagster", "dev", "-m", "campaign_pipeline.definitions"]
    command += ["-p", str(port), "-h", "127.0.0.1"]
    process = subprocess.Popen(command, env=os.environ.copy(), stdin=subprocess.DEVNULL)

    def forward_sigterm(signum: int, frame: FrameType | None) -> None:
        process.send_signal(signal.SIGTERM)
        raise KeyboardInterrupt

    previous: Callable[..., Any] | int | None = signal.signal(signal.SIGTERM, forward_sigterm)
    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and not port_is_open(port) and time.monotonic() < deadline:
            time.sleep(0.5)
        if process.poll() is None:
            messages_command = " ".join(
                f"{name}={shlex.quote(value)}"
                for name, value in {
                    "AWS_ENDPOINT_URL_SQS": endpoint,
                    QUEUE_URL_VARIABLE: queue_url,
                    REGION_VARIABLE: DEMO_REGION,
                    **DEMO_CREDENTIALS,
                }.items()
            )
            _out(
                f"\nDagster UI: http://127.0.0.1:{port}  (the sensor looks for campaigns "
                f"every {interval} s)\n"
                f"Messages in the queue:\n  {messages_command} {_own_command()} messages "
                "--limit 5\nStop with Ctrl-C.\n"
            )
        return process.wait()
    except KeyboardInterrupt:
        # The terminal sent Ctrl-C to dagster dev too: let it stop its daemon and webserver.
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        return 0
    finally:
        stop_process(process, timeout=15)
        signal.signal(signal.SIGTERM, previous)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the pipeline on sample campaigns with a local SQS server and a SQLite store."""
    home = _ensure_dagster_home(Path(".demo") / "dagster_home")
    database = home.parent / "campaigns.db"
    if not args.once and port_is_open(args.port):
        raise CliError(f"port {args.port} is in use; pick another with --port")
    reset_demo_database(database)
    # The demo talks only to its own moto server, so fake credentials are all it needs.
    for variable in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(variable, None)
    os.environ.update(DEMO_CREDENTIALS)
    os.environ.update({REGION_VARIABLE: DEMO_REGION, "AWS_DEFAULT_REGION": DEMO_REGION})
    os.environ[DATABASE_URL_VARIABLE] = f"sqlite:///{database}"
    with local_sqs_server(home.parent / "moto.log") as endpoint:
        os.environ["AWS_ENDPOINT_URL_SQS"] = endpoint
        client = boto3.client("sqs", region_name=DEMO_REGION, endpoint_url=endpoint)
        queue_url = client.create_queue(
            QueueName=DEMO_QUEUE_NAME, Attributes={"FifoQueue": "true"}
        )["QueueUrl"]
        os.environ[QUEUE_URL_VARIABLE] = queue_url
        store = CampaignStore()
        store.create_schema()
        campaign_ids = seed_demo_campaigns(store)
        store.engine.dispose()
        _out(
            f"Seeded {len(campaign_ids)} campaigns into {database}; "
            f"queue {queue_url} on a local SQS server (moto) at {endpoint}; "
            f"Dagster instance at {home}"
        )
        if args.once:
            return _demo_once(args, campaign_ids, queue_url)
        return _demo_dev(args.port, endpoint, queue_url)


def _whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
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


def build_parser() -> argparse.ArgumentParser:
    """The command line: global options and the init-db, process, messages and demo commands."""
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
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init_db = commands.add_parser(
        "init-db",
        parents=[common],
        help="create the campaign tables (safe to repeat)",
        description="Create the campaign tables in CAMPAIGN_DATABASE_URL (default: campaigns.db "
        "in $DAGSTER_HOME, else the working directory). Existing tables are kept.",
    )
    init_db.set_defaults(handler=cmd_init_db)

    process = commands.add_parser(
        "process",
        parents=[common, verbose],
        help="queue one campaign's messages now",
        description="Run process_campaign_messages for one campaign in this process, recorded "
        "in the Dagster instance at $DAGSTER_HOME (default ./.dagster).",
    )
    process.add_argument("campaign_id", metavar="CAMPAIGN_ID", help="UUID of the campaign")
    process.add_argument(
        "--max-concurrent-batches",
        type=_whole_number(1, 256),
        help="SendMessageBatch calls in flight at once (default: the resource's, 64)",
    )
    process.set_defaults(handler=cmd_process)

    messages = commands.add_parser(
        "messages",
        parents=[common],
        help="show messages waiting in the queue without consuming them",
        description=MESSAGES_DESCRIPTION,
    )
    messages.add_argument(
        "--limit", type=_whole_number(1), default=10, help="most messages to show (default 10)"
    )
    messages.add_argument("--queue-url", help=f"queue to read (default ${QUEUE_URL_VARIABLE})")
    messages.set_defaults(handler=cmd_messages)

    sqs_status = commands.add_parser(
        "sqs-status",
        parents=[common],
        help="show whether the queue answers, its depth and settings",
        description=SQS_STATUS_DESCRIPTION,
    )
    sqs_status.add_argument("--json", action="store_true", help="print the status as JSON")
    sqs_status.set_defaults(handler=cmd_sqs_status)

    trigger = commands.add_parser(
        "trigger",
        parents=[common],
        help="start a campaign's run through the Dagster webserver (GraphQL)",
        description="Launch process_campaign_messages for one campaign through the Dagster "
        "webserver's GraphQL API, with the sensor's run config and tags, and print the run's "
        "id and UI link. Refused, with exit status 2, for an unknown campaign, one whose status "
        "cannot be processed, or one with a run already queued or running. The campaign is read "
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
    trigger.set_defaults(handler=cmd_trigger)

    demo = commands.add_parser(
        "demo",
        parents=[common, verbose],
        help="run the pipeline on sample campaigns with a local SQS server",
        description="Seed sample campaigns into a fresh SQLite store, start a local SQS server "
        "(moto), and run dagster dev (or, with --once, process them here and print a summary). "
        "Uses $DAGSTER_HOME, default ./.demo/dagster_home.",
    )
    demo.add_argument(
        "--once", action="store_true", help="process the campaigns once, print a summary, exit"
    )
    demo.add_argument(
        "--port",
        type=_whole_number(1, 65535),
        default=3000,
        help="port of the Dagster UI (default 3000)",
    )
    demo.set_defaults(handler=cmd_demo)
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
    except (CliError, DemoError, SettingsError) as error:
        _err(f"{PROG}: error: {error}")
        return 2
    except KeyboardInterrupt:
        _err(f"{PROG}: interrupted")
        return 130
    except Exception as error:
        if args.debug:
            raise
        _err(f"{PROG}: error: {type(error).__name__}: {one_line(error)}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
