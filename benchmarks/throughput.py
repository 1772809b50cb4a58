"""Recipients per second of the real `process_campaign_messages` job, with and without SQS.

Seeds a PostgreSQL campaign store with one campaign of N recipients (template with parameters,
personalised from the name and an attribute, ~1% invalid phone numbers), then runs the job in a
fresh process per measurement so peak RSS is the job's own:

- `null`: an SQS resource that accepts every batch without a network call: the cost of claim,
  streaming, payload building, validation, batching and recording outcomes;
- `fauxqs`: the npm SQS emulator on loopback (installed under benchmarks/ on first use).

    .venv/bin/python benchmarks/throughput.py --recipients 100000 --sinks null fauxqs
"""

import argparse
import contextlib
import io
import json
import os
import resource
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import dagster as dg
import psycopg

from campaign_pipeline.jobs import process_campaign_messages
from campaign_pipeline.ops import CampaignConfig
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import BatchResult, SqsQueue

BENCHMARKS = Path(__file__).parent
ADMIN_URL = os.environ.get(
    "BENCHMARK_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
FAUXQS_VERSION = "1.9.2"  # the last release that runs on Node.js 20 (2.x needs node:sqlite)


class NullSqsQueue(SqsQueue):
    """Accepts every message without sending it: measures everything but SQS."""

    def max_message_bytes(self) -> int:
        """AWS's current limit."""
        return 1_048_576

    def send_batch(
        self, campaign_id: str, ids: Sequence[str], bodies: Sequence[str]
    ) -> BatchResult:
        """Every entry accepted, with its id as a made-up message id."""
        return BatchResult(accepted_ids=list(ids), message_ids=list(ids))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def fauxqs_server() -> Iterator[str]:
    """Start fauxqs on a free loopback port; yields its endpoint."""
    if not (BENCHMARKS / "node_modules" / "fauxqs").exists():
        subprocess.run(
            ["npm", "install", "--no-save", "--silent", f"fauxqs@{FAUXQS_VERSION}"],
            cwd=BENCHMARKS,
            check=True,
        )
    port = free_port()
    env = os.environ | {"FAUXQS_PORT": str(port), "FAUXQS_HOST": "127.0.0.1"}
    process = subprocess.Popen(
        [str(BENCHMARKS / "node_modules" / ".bin" / "fauxqs")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            if time.monotonic() > deadline:
                raise TimeoutError("fauxqs did not start")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def create_database() -> str:
    name = f"campaign_benchmark_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed_campaign(database_url: str, recipients: int) -> str:
    """One asset_generated campaign with `recipients` recipients, loaded with COPY."""
    store = CampaignStore(database_url=database_url)
    store.create_schema()
    campaign_id = store.add_campaign(
        organization_id=str(uuid.uuid4()),
        name="benchmark",
        status="asset_generated",
        message_type="template",
        template_name="welcome_message",
        template_language="en",
        template_parameters=[
            {"type": "header", "valueType": "text", "value": "Welcome!"},
            {"type": "body", "valueType": "text", "value": "{{name}} from {{city}}"},
        ],
    )
    store.engine.dispose()
    rows = io.StringIO()
    for i in range(recipients):
        phone = f"555{i:09d}" if i % 100 == 0 else f"+1{i:010d}"  # 1% without '+'
        rows.write(
            f'{uuid.uuid4()}\t{campaign_id}\t{phone}\tName {i}\t{{"city": "City {i % 97}"}}\n'
        )
    with psycopg.connect(database_url) as connection, connection.cursor() as cursor:
        with cursor.copy(
            "COPY campaign_audience (id, campaign_id, phone_number, name, attributes) FROM STDIN"
        ) as copy:
            copy.write(rows.getvalue())
        cursor.execute("ANALYZE campaign_audience")
    return campaign_id


def reset_campaign(database_url: str, campaign_id: str) -> None:
    with psycopg.connect(database_url) as connection:
        connection.execute(
            "UPDATE campaign_audience SET status = 'pending', sqs_message_id = NULL, "
            "failure_reason = NULL WHERE campaign_id = %s",
            (campaign_id,),
        )
        connection.execute(
            "UPDATE campaigns SET status = 'asset_generated', lease_run_id = NULL WHERE id = %s",
            (campaign_id,),
        )


def run_once(database_url: str, campaign_id: str, endpoint: str | None) -> dict:
    """Run the job in this process and report its numbers (called in a child process)."""
    if endpoint:
        import boto3

        client = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
        queue_url = client.create_queue(QueueName=f"bench-{uuid.uuid4().hex[:8]}")["QueueUrl"]
        queue: SqsQueue = SqsQueue(
            queue_url=queue_url, region_name="us-east-1", endpoint_url=endpoint
        )
    else:
        queue = NullSqsQueue(queue_url="null://", region_name="us-east-1")
    cpu = time.process_time()
    started = time.perf_counter()
    result = process_campaign_messages.execute_in_process(
        run_config=dg.RunConfig(ops={"claim_campaign": CampaignConfig(campaign_id=campaign_id)}),
        resources={"campaign_store": CampaignStore(database_url=database_url), "sqs_queue": queue},
    )
    wall = time.perf_counter() - started
    counts = result.output_for_node("complete_campaign")
    handled = counts["ready_to_send"] + counts["failed"]
    return {
        "recipients": handled,
        "queued": counts["ready_to_send"],
        "failed": counts["failed"],
        "wall_s": round(wall, 2),
        "recipients_per_s": round(handled / wall),
        "cpu_s": round(time.process_time() - cpu, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def measure(database_url: str, campaign_id: str, endpoint: str | None) -> dict:
    reset_campaign(database_url, campaign_id)
    output = subprocess.run(
        [sys.executable, __file__, "--child", database_url, campaign_id, endpoint or ""],
        env=os.environ | {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=100_000)
    parser.add_argument(
        "--sinks", nargs="+", default=["null", "fauxqs"], choices=["null", "fauxqs"]
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        database_url, campaign_id, endpoint = args.child
        print(json.dumps(run_once(database_url, campaign_id, endpoint or None)))
        return
    database_url = create_database()
    try:
        started = time.perf_counter()
        campaign_id = seed_campaign(database_url, args.recipients)
        print(f"seeded {args.recipients} recipients in {time.perf_counter() - started:.1f}s")
        for sink in args.sinks:
            if sink == "null":
                print(json.dumps({"sink": "null", **measure(database_url, campaign_id, None)}))
            else:
                with fauxqs_server() as endpoint:
                    print(
                        json.dumps(
                            {"sink": "fauxqs", **measure(database_url, campaign_id, endpoint)}
                        )
                    )
    finally:
        drop_database(database_url)


if __name__ == "__main__":
    main()
