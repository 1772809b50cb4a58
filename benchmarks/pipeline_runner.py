"""Run the real `process_campaign_messages` job over seeded campaigns and report its cost.

Meant to run as its own process, so peak RSS and CPU time are the pipeline's alone:

    python benchmarks/pipeline_runner.py --database-url URL --campaign-ids ID[,ID...] \
        --sink null|sqs [--endpoint URL --queue-url URL] [--processes N --recipients-per-shard M]

Campaigns run one after another, one Dagster run each. With `--processes 1` every step runs in
this process (`execute_in_process`); with more, the multiprocess executor runs that many send
steps at once in child processes, on a temporary Dagster instance. With `--celery-workers N`
(and CAMPAIGN_EXECUTOR=celery, which the parent sets) every step is a Celery task: N workers of
one pool process each are started on a RabbitMQ vhost of their own before the clock starts, and
up to N shards are sent at once. `first_message_s` is when the first outcome was recorded
(polled every 20 ms), from the run's start. Prints one JSON line:
recipients, queued, failed, wall_s, cpu_s (this process and every descendant, sampled from /proc,
since step processes belong to the executor's fork server), peak_rss_mb (the largest single
process) and peak_rss_sum_mb (this process plus its largest descendant).
"""

import argparse
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# A Celery worker loads this file by path, without the script's directory on its path.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from process_tree import watch_descendants

from campaign_pipeline.defs.jobs import campaign_run_config, process_campaign_messages
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import SqsQueue
from campaign_pipeline.sqs import BatchResult, SqsBatchQueue
from campaign_pipeline.store.schema import campaigns

REGION = "us-east-1"
BIN = Path(sys.executable).parent
CELERY = os.environ.get("CAMPAIGN_EXECUTOR") == "celery"


class NullBatchQueue(SqsBatchQueue):
    """Accepts every message without sending it: measures everything but SQS.

    It cuts at `send_batch`, as this runner always has, so an A/B against an older commit
    compares the same work.
    """

    def __init__(self) -> None:
        super().__init__(client=None, queue_url="null://sink")

    def max_message_bytes(self) -> int:
        """AWS's current limit."""
        return 1_048_576

    def send_batch(
        self,
        campaign_id: str,
        ids: Sequence[str],
        bodies: Sequence[str],
        fair_group_id: str | None = None,
    ) -> BatchResult:
        """Every entry accepted, with its id as a made-up message id."""
        return BatchResult(accepted_ids=list(ids), message_ids=list(ids))


def null_batch_queue() -> SqsBatchQueue:
    """The null sink, for a send without Dagster."""
    return NullBatchQueue()


class NullSqsQueue(dg.ConfigurableResource):
    """The null sink as the job's `sqs_queue`: the send op asks only for these two.

    Each run still makes the boto3 client the real resource makes, as this runner's null sink
    always has (it was a subclass of the resource): "everything but SQS" includes it, and an
    A/B against an older commit then compares like with like.
    """

    queue_url: str = "null://sink"

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Make (and drop) the client a run of the real resource makes."""
        SqsQueue(queue_url=self.queue_url, region_name=REGION).client.close()

    def batch_queue(self) -> SqsBatchQueue:
        """A null queue."""
        return NullBatchQueue()


def _resources(sink: str) -> dict[str, dg.ConfigurableResource]:
    """Resources from the environment the parent process set (see `main`)."""
    if sink == "null":
        queue: dg.ConfigurableResource = NullSqsQueue()
    else:
        # The resource's own default unless an experiment sets it.
        concurrency = os.environ.get("BENCHMARK_MAX_CONCURRENT_BATCHES")
        queue = SqsQueue(
            queue_url=os.environ["AWS_SQS_QUEUE_URL"],
            region_name=REGION,
            endpoint_url=os.environ["AWS_ENDPOINT_URL_SQS"],
            **({"max_concurrent_batches": int(concurrency)} if concurrency else {}),
        )
    # Under Celery a step's inputs come from files every worker of this machine reads.
    io_manager = {"io_manager": dg.FilesystemIOManager()} if CELERY else {}
    return {"campaign_store": CampaignStore(), "sqs_queue": queue, **io_manager}


def null_sink_job() -> dg.JobDefinition:
    """The job with the null sink, rebuilt by name in each step process."""
    return dg.Definitions(
        jobs=[process_campaign_messages], resources=_resources("null")
    ).get_job_def(process_campaign_messages.name)


def sqs_job() -> dg.JobDefinition:
    """The job sending to the SQS endpoint in the environment, rebuilt in each step process."""
    return dg.Definitions(
        jobs=[process_campaign_messages], resources=_resources("sqs")
    ).get_job_def(process_campaign_messages.name)


@contextlib.contextmanager
def celery_workers(count: int, home: str) -> Iterator[None]:
    """`count` Celery workers on a vhost of their own, ready; every one ended afterwards."""
    rabbitmqctl = shutil.which("rabbitmqctl") or "rabbitmqctl"
    vhost = f"benchmark_{uuid.uuid4().hex[:8]}"
    subprocess.run([rabbitmqctl, "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(
        [rabbitmqctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )
    os.environ["CAMPAIGN_CELERY_BROKER"] = f"pyamqp://guest@127.0.0.1:5672/{vhost}"
    os.environ["DAGSTER_HOME"] = home
    logs = [Path(home) / f"worker{i}.log" for i in range(count)]
    workers = []
    try:
        for i, log in enumerate(logs):
            with log.open("wb") as output:
                workers.append(
                    subprocess.Popen(
                        [
                            str(BIN / "celery"),
                            *("-A", "campaign_pipeline.defs.celery_executor", "worker"),
                            *("--concurrency=1", "--prefetch-multiplier=1", "-n", f"bench{i}@%h"),
                            *("--without-mingle", "--without-gossip", "--loglevel=INFO"),
                        ],
                        stdout=output,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        deadline = time.monotonic() + 60
        while not all(" ready." in log.read_text(errors="replace") for log in logs):
            if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                tail = "\n".join(log.read_text(errors="replace")[-2000:] for log in logs)
                raise RuntimeError(f"the Celery workers did not start:\n{tail}")
            time.sleep(0.1)
        yield
    finally:
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
        subprocess.run([rabbitmqctl, "delete_vhost", vhost], check=False, capture_output=True)


@contextlib.contextmanager
def first_outcome_clock(campaign_id: str) -> Iterator[dict[str, float]]:
    """Seconds from entering to the campaign's first recorded outcome, polled every 20 ms.

    It polls the campaign's live counts (one row by key), which the outcome writes move in the
    transaction that records them: counting the recipients by status every 20 ms instead cost
    the run it measures CPU of its own and PostgreSQL a share of a core. The campaign must
    start with no outcome (a seeded or reset one).
    """
    store = CampaignStore()
    started = time.perf_counter()
    seen: dict[str, float] = {}
    done = threading.Event()
    handled = sa.select(campaigns.c.queued_count + campaigns.c.failed_count).where(
        campaigns.c.id == campaign_id
    )

    def poll() -> None:
        while not done.is_set():
            with store.engine.connect() as connection:
                if connection.execute(handled).scalar():
                    seen["first_message_s"] = time.perf_counter() - started
                    return
            done.wait(0.02)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join()
        store.engine.dispose()


def run_campaign(campaign_id: str, sink: str, processes: int, shard_size: int) -> dict[str, int]:
    """Process one campaign; returns its final counts."""
    run_config = campaign_run_config(campaign_id, processes, recipients_per_shard=shard_size)
    if processes == 1 and not CELERY:
        result = process_campaign_messages.execute_in_process(
            run_config=run_config, resources=_resources(sink)
        )
        return result.output_for_node("complete_campaign")
    with tempfile.TemporaryDirectory() as home, dg.instance_for_test(temp_dir=home) as instance:
        job = dg.reconstructable(null_sink_job if sink == "null" else sqs_job)
        with dg.execute_job(job, instance=instance, run_config=run_config) as result:
            if not result.success:
                raise RuntimeError(f"run {result.run_id} failed")
            return result.output_for_node("complete_campaign")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--campaign-ids", required=True, help="comma-separated")
    parser.add_argument("--sink", choices=["null", "sqs"], required=True)
    parser.add_argument("--endpoint", help="SQS endpoint (sink sqs)")
    parser.add_argument("--queue-url", help="SQS queue URL (sink sqs)")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--recipients-per-shard", type=int, default=250_000)
    parser.add_argument(
        "--celery-workers", type=int, default=0, help="with CAMPAIGN_EXECUTOR=celery"
    )
    args = parser.parse_args()
    # Step processes rebuild the resources from the environment.
    os.environ["CAMPAIGN_DATABASE_URL"] = args.database_url
    if args.sink == "sqs":
        os.environ["AWS_ENDPOINT_URL_SQS"] = args.endpoint
        os.environ["AWS_SQS_QUEUE_URL"] = args.queue_url
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "benchmark")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "benchmark")

    totals = {"recipients": 0, "queued": 0, "failed": 0}
    first: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        if CELERY:
            home = stack.enter_context(tempfile.TemporaryDirectory())
            stack.enter_context(celery_workers(args.celery_workers, home))
        started = time.perf_counter()
        with watch_descendants() as descendants:
            for campaign_id in args.campaign_ids.split(","):
                # Only the first campaign's time is reported: no clock after it.
                clock = contextlib.nullcontext({}) if first else first_outcome_clock(campaign_id)
                with clock as seen:
                    counts = run_campaign(
                        campaign_id, args.sink, args.processes, args.recipients_per_shard
                    )
                first = first or seen
                totals["queued"] += counts["ready_to_send"]
                totals["failed"] += counts["failed"]
                totals["recipients"] += (
                    counts["ready_to_send"] + counts["failed"] + counts["pending"]
                )
        wall = time.perf_counter() - started
    own = resource.getrusage(resource.RUSAGE_SELF)
    own_rss_mb = own.ru_maxrss / 1024
    print(
        json.dumps(
            {
                **totals,
                "wall_s": round(wall, 3),
                "first_message_s": round(first.get("first_message_s", wall), 3),
                "cpu_s": round(own.ru_utime + own.ru_stime + descendants.total_cpu_s, 2),
                "peak_rss_mb": round(max(own_rss_mb, descendants.largest_rss_mb)),
                "peak_rss_sum_mb": round(own_rss_mb + descendants.largest_rss_mb),
            }
        )
    )


if __name__ == "__main__":
    main()
