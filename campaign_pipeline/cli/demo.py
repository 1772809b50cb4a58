"""The `demo` command: sample campaigns, a local SQS server (moto), then dagster dev or one pass.

The demo's data and server live in `campaign_pipeline.demo`; this module runs them.
"""

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

import boto3
import dagster as dg

from campaign_pipeline.cli.common import (
    PROG,
    QUEUE_URL_VARIABLE,
    REGION_VARIABLE,
    CliError,
    Commands,
    ParentParsers,
    ensure_dagster_home,
    err,
    failure_description,
    log_level,
    out,
    pretty,
    whole_number,
    with_console_log_level,
)
from campaign_pipeline.cli.inspection import message_body, peek_messages
from campaign_pipeline.defs.tags import CAMPAIGN_ID_TAG, JOB_NAME
from campaign_pipeline.demo import (
    DEMO_QUEUE_NAME,
    local_sqs_server,
    port_is_open,
    reset_demo_database,
    seed_demo_campaigns,
    stop_process,
)
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import SqsQueue
from campaign_pipeline.sending.stats import merge_stats
from campaign_pipeline.settings import campaign_processing_interval_seconds
from campaign_pipeline.store.engine import DATABASE_URL_VARIABLE

DEMO_REGION = "us-east-1"
DEMO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo"}


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
        campaign = store.campaigns.get(campaign_id) or {}
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
    from campaign_pipeline.defs.sensors import asset_generated_campaigns_sensor

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
                if request.tags[CAMPAIGN_ID_TAG] not in processed
            ]
            if not requests:
                break
            for request in requests:
                processed.add(request.tags[CAMPAIGN_ID_TAG])
                result = job.execute_in_process(
                    run_config=with_console_log_level(request.run_config, log_level(args)),
                    tags=request.tags,
                    instance=instance,
                    raise_on_error=False,
                )
                if result.success:
                    stats = merge_stats(result.output_for_node("send_campaign_messages").values())
                    reasons.update(stats.failed_by_reason)
                else:
                    failures.append(f"run {result.run_id} failed in {failure_description(result)}")
    seconds = time.perf_counter() - started
    out(f"\n{len(processed)} runs in {seconds:.1f} s:\n")
    for line in _demo_table(store, campaign_ids):
        out(f"  {line}")
    out("\nTop failure reasons:")
    for reason, count in reasons.most_common(10) or [("none", 0)]:
        out(f"  {count:>3}  {reason}" if count else f"  {reason}")
    queue = SqsQueue(queue_url=queue_url, region_name=DEMO_REGION)
    messages = peek_messages(queue.client, queue_url, 3)
    out(f"\nFirst {len(messages)} messages in {DEMO_QUEUE_NAME}:")
    for message in messages:
        out(pretty(message_body(message)))
    out(
        f"\nThe runs are in the Dagster instance at {os.environ['DAGSTER_HOME']}; browse them with "
        f"`DAGSTER_HOME={shlex.quote(os.environ['DAGSTER_HOME'])} dagster dev "
        "-m campaign_pipeline.definitions`."
    )
    store.engine.dispose()
    for failure in failures:
        err(f"{PROG}: {failure}")
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
            out(
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
    home = ensure_dagster_home(Path(".demo") / "dagster_home")
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
        out(
            f"Seeded {len(campaign_ids)} campaigns into {database}; "
            f"queue {queue_url} on a local SQS server (moto) at {endpoint}; "
            f"Dagster instance at {home}"
        )
        if args.once:
            return _demo_once(args, campaign_ids, queue_url)
        return _demo_dev(args.port, endpoint, queue_url)


def add_commands(commands: Commands, parents: ParentParsers) -> None:
    """Add `demo`."""
    demo = commands.add_parser(
        "demo",
        parents=[parents.common, parents.verbose],
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
        type=whole_number(1, 65535),
        default=3000,
        help="port of the Dagster UI (default 3000)",
    )
    demo.set_defaults(handler=cmd_demo)
