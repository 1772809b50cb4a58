"""One campaign's shards on two Celery workers over RabbitMQ (`CAMPAIGN_EXECUTOR=celery`).

Each test gets its own RabbitMQ virtual host (made with `rabbitmqctl`, deleted after), so a task
left by a killed run can reach no other test's workers; the Dagster instance of
`deploy/dagster.yaml` on throwaway PostgreSQL databases (`dagster_instance_env`); and workers
started as `celery -A campaign_pipeline.defs.celery_executor worker` subprocesses, each in its own
process group, ended (SIGTERM, then SIGKILL) after the test. Runs are launched with Dagster's own
`dagster job execute` or `campaign-pipeline process`, which orchestrate the run in their process
and submit every step to the workers.

Every run sends to fauxqs (installed under benchmarks/ with npm on first use), like the rest of
the end-to-end tier: moto's server costs time proportional to the messages a queue holds on every
call, and sends about 10 batches a second here once a few thousand are waiting.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest
import yaml

from campaign_pipeline.defs.jobs import campaign_run_config
from campaign_pipeline.defs.tags import campaign_tags
from campaign_pipeline.resources.campaign_store import CampaignStore
from tests.conftest import REGION, assert_one_line_error
from tests.e2e.conftest import BIN, ORGANIZATION_ID, ROOT, _end_process_group, add_campaign
from tests.support.invariant import check_campaign_invariant, drain_queue

JOB = "process_campaign_messages"
WORKER_READY_SECONDS = 60
RUN_SECONDS = 150


@pytest.fixture
def celery_broker() -> Iterator[str]:
    """A RabbitMQ virtual host of this test alone; its broker URL. Deleted after the test."""
    rabbitmqctl = shutil.which("rabbitmqctl")
    assert rabbitmqctl, "rabbitmqctl is needed to give each test its own RabbitMQ vhost"
    vhost = f"campaign_test_{uuid.uuid4().hex[:8]}"

    def ctl(*args: str) -> None:
        subprocess.run([rabbitmqctl, *args], check=True, capture_output=True, timeout=60)

    ctl("add_vhost", vhost)
    try:
        ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"pyamqp://guest@127.0.0.1:5672/{vhost}"
    finally:
        ctl("delete_vhost", vhost)


@pytest.fixture
def celery_env(dagster_instance_env: dict[str, str], celery_broker: str) -> dict[str, str]:
    """The instance's environment with the Celery executor on this test's vhost."""
    return dagster_instance_env | {
        "CAMPAIGN_EXECUTOR": "celery",
        "CAMPAIGN_CELERY_BROKER": celery_broker,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "AWS_DEFAULT_REGION": REGION,
    }


@dataclass
class Worker:
    """A Celery worker subprocess (its own process group) and its log."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def ready(self) -> bool:
        return f"{self.name}@" in self.text() and " ready." in self.text()

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once, as a lost machine would."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self) -> None:
        """SIGTERM to the group: a warm shutdown (an idle worker takes a few seconds)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL to what is left of it after 5 s; reap the worker.

        The worker is reaped first: until then its zombie keeps the group alive.
        """
        self.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        _end_process_group(self.process.pid, timeout=5)


@dataclass
class Workers:
    """Starts workers for one test and ends every one of them after it."""

    env: dict[str, str]
    log_dir: Path
    started: list[Worker] = field(default_factory=list)

    def start(self, *names: str) -> list[Worker]:
        """Start one worker per name (one pool process each); return once all are ready."""
        workers = []
        for name in names:
            log = self.log_dir / f"{name}.log"
            with log.open("wb") as output:
                process = subprocess.Popen(
                    [
                        str(BIN / "celery"),
                        *("-A", "campaign_pipeline.defs.celery_executor", "worker"),
                        *("--concurrency=1", "--prefetch-multiplier=1", "--without-mingle"),
                        *("--without-gossip", "-n", f"{name}@%h", "--loglevel=INFO"),
                    ],
                    cwd=ROOT,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            worker = Worker(name, process, log)
            self.started.append(worker)
            workers.append(worker)
        deadline = time.monotonic() + WORKER_READY_SECONDS
        while not all(worker.ready() for worker in workers):
            for worker in workers:
                assert worker.process.poll() is None, f"{worker.name} exited:\n{worker.text()}"
            assert time.monotonic() < deadline, "workers not ready:\n" + "\n".join(
                worker.text()[-3000:] for worker in workers
            )
            time.sleep(0.2)
        return workers

    def stop_all(self) -> None:
        for worker in self.started:
            worker.terminate()
        for worker in self.started:
            worker.stop()


@pytest.fixture
def workers(celery_env: dict[str, str], tmp_path: Path) -> Iterator[Workers]:
    log_dir = tmp_path / "workers"
    log_dir.mkdir()
    started = Workers(celery_env, log_dir)
    try:
        yield started
    finally:
        started.stop_all()


def sqs_client(endpoint: str) -> Any:
    return boto3.client(
        "sqs",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def execute_command(config_file: Path, tags: dict[str, str]) -> list[str]:
    """Dagster's own `dagster job execute` of the campaign job, with its run config and tags."""
    location = ("-m", "campaign_pipeline.definitions", "-j", JOB)
    run = ("-c", str(config_file), "--tags", json.dumps(tags))
    return [str(BIN / "dagster"), "job", "execute", *location, *run]


def execute_run(
    env: dict[str, str], campaign_id: str, tmp_path: Path, processes: int, **config: Any
) -> subprocess.CompletedProcess[str]:
    """`dagster job execute` of the campaign job with the run config the sensor would write."""
    run_config = campaign_run_config(campaign_id, processes, executor="celery", **config)
    config_file = tmp_path / f"run-{uuid.uuid4().hex[:6]}.yaml"
    config_file.write_text(yaml.safe_dump(run_config))
    tags = campaign_tags(campaign_id, ORGANIZATION_ID)
    return subprocess.run(
        execute_command(config_file, tags),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_SECONDS,
        check=False,
    )


def the_run(instance: dg.DagsterInstance, campaign_id: str) -> dg.DagsterRun:
    runs = instance.get_runs(dg.RunsFilter(tags={"campaign_id": campaign_id}))
    assert len(runs) == 1, runs
    return runs[0]


def workers_of_steps(instance: dg.DagsterInstance, run_id: str) -> list[tuple[str, str]]:
    """(step key, Celery worker) of every task a worker began, in order, from the run's events."""
    began = []
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = entry.dagster_event
        metadata = event.event_specific_data.metadata if event else {}
        if event and "Celery worker" in metadata:
            began.append((str(event.step_key), str(metadata["Celery worker"].value)))
    return began


def first_event_at(instance: dg.DagsterInstance, run_id: str, step: str, event_type: str) -> float:
    """When the first `event_type` event of `step` was stored."""
    entries = instance.all_logs(run_id, of_type=dg.DagsterEventType(event_type))
    return min(entry.timestamp for entry in entries if entry.step_key == step)


def step_pids(instance: dg.DagsterInstance, run_id: str) -> dict[str, set[int]]:
    """The pids of the processes that started each step (STEP_START events)."""
    pids: dict[str, set[int]] = {}
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START):
        event = entry.dagster_event
        assert event and event.pid is not None
        pids.setdefault(str(event.step_key), set()).add(event.pid)
    return pids


def drain_in_parallel(endpoint: str, queue_url: str, threads: int = 4) -> list[dict[str, Any]]:
    """Every message of the queue, received and deleted by `threads` clients at once.

    20,000 messages take one client about 6 s here; `drain_queue` then confirms the queue is
    empty and nothing is left in flight.
    """

    def drain_some() -> list[dict[str, Any]]:
        client, got, empty = sqs_client(endpoint), [], 0
        while empty < 2:
            batch = client.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, AttributeNames=["All"]
            ).get("Messages", [])
            if not batch:
                empty += 1
                continue
            empty = 0
            got += batch
            client.delete_message_batch(
                QueueUrl=queue_url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": message["ReceiptHandle"]}
                    for i, message in enumerate(batch)
                ],
            )
        return got

    with ThreadPoolExecutor(threads) as pool:
        parts = list(pool.map(lambda _: drain_some(), range(threads)))
    return [message for part in parts for message in part] + drain_queue(
        sqs_client(endpoint), queue_url
    )


def test_four_shards_run_on_both_workers_and_queue_everyone_once(
    celery_env: dict[str, str],
    workers: Workers,
    sqs_endpoint: str,
    campaign_store: CampaignStore,
    instance: dg.DagsterInstance,
    tmp_path: Path,
) -> None:
    """20,000 recipients in 4 shards on two workers: both send, each recipient is queued once."""
    client = sqs_client(sqs_endpoint)
    queue_url = client.create_queue(QueueName=f"celery-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    env = celery_env | {"AWS_ENDPOINT_URL_SQS": sqs_endpoint, "AWS_SQS_QUEUE_URL": queue_url}
    workers.env = env
    first, second = workers.start("w1", "w2")
    campaign_id = add_campaign(campaign_store, valid=20_000)

    result = execute_run(env, campaign_id, tmp_path, processes=4, recipients_per_shard=5_000)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = the_run(instance, campaign_id)
    assert run.status == dg.DagsterRunStatus.SUCCESS
    began = workers_of_steps(instance, run.run_id)
    sends = {step: worker for step, worker in began if step.startswith("send_campaign_messages")}
    assert len(sends) == 4, began
    assert {worker.split("@")[0] for worker in sends.values()} == {"w1", "w2"}, began
    pids = step_pids(instance, run.run_id)
    worker_pids = {first.process.pid, second.process.pid}
    send_pids = set().union(*(pids[step] for step in sends))
    # Each worker's one pool process (a child of the worker) ran shards; none ran here.
    assert len(send_pids) == 2, pids
    assert not send_pids & (worker_pids | {os.getpid()})
    counts = campaign_store.audience.counts(campaign_id)
    assert (counts["ready_to_send"], counts["pending"], counts["failed"]) == (20_000, 0, 0)
    messages = drain_in_parallel(sqs_endpoint, queue_url)
    report = check_campaign_invariant(
        campaign_store, campaign_id, client, queue_url, fifo=False, messages=messages
    )
    assert report.queued == 20_000
    assert not report.duplicates


def test_worker_killed_mid_shard_loses_nothing_and_the_shard_is_finished_elsewhere(
    celery_env: dict[str, str],
    workers: Workers,
    sqs_endpoint: str,
    campaign_store: CampaignStore,
    instance: dg.DagsterInstance,
    tmp_path: Path,
) -> None:
    """SIGKILL of a worker mid-shard: its task goes back to RabbitMQ, the other worker sends
    the shard's pending recipients; nobody is lost, and only the dead worker's unrecorded
    batches (at most one outcome write plus the batches in flight) are in the queue twice.
    With CAMPAIGN_SEND_PROCESSES=1 the second shard is submitted only once the first is done.
    """
    client = sqs_client(sqs_endpoint)
    queue_url = client.create_queue(QueueName=f"celery-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    outcomes_per_write, in_flight = 50, 2
    # Paced, so a shard lasts seconds: 300 messages/s, one send step at a time.
    env = celery_env | {
        "AWS_ENDPOINT_URL_SQS": sqs_endpoint,
        "AWS_SQS_QUEUE_URL": queue_url,
        "CAMPAIGN_MAX_MESSAGES_PER_SECOND": "300",
        "SQS_MAX_CONCURRENT_BATCHES": str(in_flight),
    }
    workers.env = env
    started = {worker.name: worker for worker in workers.start("w1", "w2")}
    total = 1_600
    campaign_id = add_campaign(campaign_store, valid=total)
    run_config = campaign_run_config(
        campaign_id,
        1,
        executor="celery",
        recipients_per_shard=total // 2,
        outcomes_per_write=outcomes_per_write,
    )
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(run_config))
    run = subprocess.Popen(
        execute_command(config_file, campaign_tags(campaign_id, ORGANIZATION_ID)),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + RUN_SECONDS
        victim: tuple[str, str] | None = None
        while victim is None:
            assert run.poll() is None, run.stdout.read() if run.stdout else ""
            assert time.monotonic() < deadline, "no shard got under way"
            runs = instance.get_runs(dg.RunsFilter(tags={"campaign_id": campaign_id}))
            queued = campaign_store.audience.counts(campaign_id)["ready_to_send"]
            if runs and 150 <= queued < total // 2:
                sends = [
                    (step, worker)
                    for step, worker in workers_of_steps(instance, runs[0].run_id)
                    if step.startswith("send_campaign_messages")
                ]
                victim = sends[0] if sends else None
            time.sleep(0.2)
        step, worker_name = victim
        killed = started[worker_name.split("@")[0]]
        killed.kill()
        at_kill = campaign_store.audience.counts(campaign_id)
        assert 0 < at_kill["pending"] < total
        output, _ = run.communicate(timeout=RUN_SECONDS)
    finally:
        if run.poll() is None:
            _end_process_group(run.pid)
    assert run.returncode == 0, output[-4000:]
    dagster_run = the_run(instance, campaign_id)
    assert dagster_run.status == dg.DagsterRunStatus.SUCCESS
    ran_on = workers_of_steps(instance, dagster_run.run_id)
    again = [w for s, w in ran_on if s == step]
    # The killed worker began the step; the broker handed it to the survivor, which finished it.
    assert len(again) == 2, ran_on
    assert again[0] == worker_name and again[1] != worker_name
    sends = sorted({s for s, _ in ran_on if s.startswith("send_campaign_messages")})
    assert len(sends) == 2, ran_on
    (other,) = set(sends) - {step}
    assert first_event_at(instance, dagster_run.run_id, other, "STEP_START") > first_event_at(
        instance, dagster_run.run_id, step, "STEP_SUCCESS"
    )
    window = outcomes_per_write + in_flight * 10
    report = check_campaign_invariant(
        campaign_store, campaign_id, client, queue_url, fifo=False, max_duplicates=window
    )
    assert report.queued == total
    assert report.pending == 0


def test_broker_down_fails_the_run_in_one_line_with_nothing_sent(
    dagster_instance_env: dict[str, str],
    campaign_store: CampaignStore,
    sqs_client: Any,
) -> None:
    """RabbitMQ unreachable: `process` fails in one line (password masked), nothing claimed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    env = dagster_instance_env | {
        "CAMPAIGN_EXECUTOR": "celery",
        "CAMPAIGN_CELERY_BROKER": f"pyamqp://guest:hunter2@127.0.0.1:{closed}//",
    }
    campaign_id = add_campaign(campaign_store, valid=30)

    result = subprocess.run(
        [str(BIN / "campaign-pipeline"), "process", campaign_id],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    line = assert_one_line_error(result, "cannot reach the Celery broker", status=1)
    assert f"127.0.0.1:{closed}" in line
    assert "hunter2" not in result.stdout + result.stderr
    assert campaign_store.audience.counts(campaign_id)["pending"] == 30
    assert (campaign_store.campaigns.get(campaign_id) or {})["status"] == "asset_generated"
    attributes = sqs_client.get_queue_attributes(
        QueueUrl=env["AWS_SQS_QUEUE_URL"], AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "0"
