"""Shared fixtures and the tiers: fake AWS credentials, moto's SQS server, campaign stores.

Tests sit in one tier each, a directory with a marker of its name (`pytest -m unit`): `unit/`
(no network, no database server, no subprocess), `integration/` (PostgreSQL, moto, the fault
proxy, subprocesses) and `e2e/` (the daemon, the webserver, Celery, the API server). Helpers
shared by tests (fault proxy, TCP relay, invariant, reliability log, the job in send
processes) are in `support/`.

moto runs as its own process (`moto_server`) on a free loopback port, so boto3 talks to it over
real HTTP. PostgreSQL tests use a throwaway database on the local server (127.0.0.1:5432, or
`TEST_POSTGRES_URL`); they are skipped, loudly, only when no server answers and `CI` is unset.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import psycopg
import pytest
import sqlalchemy as sa

from campaign_pipeline.payloads import CampaignMessage
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import SqsQueue
from campaign_pipeline.sending.lease import Lease
from campaign_pipeline.sending.shard import BatchQueue, ShardSend
from campaign_pipeline.sending.stats import SendStats
from campaign_pipeline.sending.stop import StopSignal
from campaign_pipeline.store.schema import metadata

REGION = "us-east-1"
TESTS = Path(__file__).parent
TIERS = ("unit", "integration", "e2e")
POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def pytest_configure(config: pytest.Config) -> None:
    """Start from the signal dispositions of a foreground process, however pytest was launched.

    A shell starts a background job (`cmd &`, as CI runners and `nohup` may) with SIGINT
    ignored. Dagster's in-process execution then copies SIGINT's disposition onto SIGTERM, so
    SIGTERM is ignored too, and every process started afterwards inherits that: the `tail -F`
    processes of Dagster's compute-log capture can no longer be terminated (each run then waits
    30 s for each and they outlive the suite), and SIGTERM no longer stops a child run.
    """
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def pytest_itemcollected(item: pytest.Item) -> None:
    """Mark each test with its tier, the directory it sits in; a test outside one is an error."""
    tier = item.path.relative_to(TESTS).parts[0]
    if tier not in TIERS:
        raise pytest.UsageError(f"{item.nodeid} is in no tier: put it under tests/{TIERS}")
    item.add_marker(tier)


def send_shard(
    store: CampaignStore,
    queue: SqsQueue | BatchQueue,
    message: CampaignMessage,
    run_id: str = "run-1",
    *,
    lease_seconds: float = 60.0,
    stop: StopSignal | None = None,
    **options: object,
) -> SendStats:
    """`ShardSend` of every pending recipient for `run_id`, which must hold the campaign.

    `queue` is an `SqsQueue` resource or any `BatchQueue`; `options` are ShardSend's fields.
    """
    batch_queue = queue.batch_queue() if isinstance(queue, SqsQueue) else queue
    lease = Lease(store.claims, message.campaign_id, run_id, lease_seconds)
    send = ShardSend(message, lease, store.audience, batch_queue, store.suppressions, **options)  # type: ignore[arg-type]
    return send.run(stop)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `python -m campaign_pipeline.cli ARGS...` as a subprocess in `cwd`."""
    return subprocess.run(
        [sys.executable, "-m", "campaign_pipeline.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_one_line_error(
    result: subprocess.CompletedProcess[str], *fragments: str, status: int = 2
) -> str:
    """The command failed with `status`, no traceback and one stderr line holding `fragments`."""
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    assert result.returncode == status, output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and no ambient AWS config, so nothing can reach real AWS."""
    for variable in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_SQS",
    ):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.delenv("SQS_MESSAGE_GROUP_ID", raising=False)
    monkeypatch.delenv("SQS_MAX_CONCURRENT_BATCHES", raising=False)
    monkeypatch.delenv("SQS_FAIR_QUEUE_GROUP", raising=False)
    monkeypatch.delenv("CAMPAIGN_MAX_MESSAGES_PER_SECOND", raising=False)
    monkeypatch.delenv("CAMPAIGN_DATABASE_URL", raising=False)


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a moto SQS server running in its own process."""
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@pytest.fixture(scope="session")
def sqs_endpoint(moto_endpoint: str) -> str:
    """The SQS the tier's tests send to: moto's server, whose SQS semantics the unit and
    integration tests check (the e2e tier sends to fauxqs instead, see its conftest)."""
    return moto_endpoint


@pytest.fixture
def sqs_client(sqs_endpoint: str) -> object:
    return boto3.client(
        "sqs",
        region_name=REGION,
        endpoint_url=sqs_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def make_queue(sqs_client: object) -> Callable[..., str]:
    """Create a fresh queue (FIFO when `fifo`), one per test, so queues stay small."""

    def make(fifo: bool = True, **attributes: str) -> str:
        name = f"test-{uuid.uuid4().hex[:12]}" + (".fifo" if fifo else "")
        if fifo:
            attributes["FifoQueue"] = "true"
        return sqs_client.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]

    return make


@pytest.fixture
def make_sqs_queue(sqs_endpoint: str, make_queue: Callable[..., str]) -> Callable[..., SqsQueue]:
    """An `SqsQueue` resource on a new moto queue."""

    def make(fifo: bool = True, endpoint: str | None = None, **fields: object) -> SqsQueue:
        return SqsQueue(
            queue_url=make_queue(fifo),
            region_name=REGION,
            endpoint_url=endpoint or sqs_endpoint,
            **fields,
        )

    return make


def drain(sqs_client: object, queue_url: str) -> list[dict]:
    """Receive and delete every message in the queue; returns them with their attributes."""
    messages: list[dict] = []
    empty_receives = 0
    while empty_receives < 2:
        response = sqs_client.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            AttributeNames=["All"],
            WaitTimeSeconds=0,
        )
        batch = response.get("Messages", [])
        if not batch:
            empty_receives += 1
            continue
        empty_receives = 0
        messages += batch
        sqs_client.delete_message_batch(
            QueueUrl=queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)
            ],
        )
    return messages


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A new, empty PostgreSQL database for this test session, dropped afterwards."""
    name = f"campaign_pipeline_test_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {error}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_store(postgres_url: str) -> Iterator[CampaignStore]:
    """A campaign store on PostgreSQL with empty tables."""
    store = CampaignStore(database_url=postgres_url)
    store.create_schema()
    with store.engine.begin() as connection:
        for table in reversed(metadata.sorted_tables):
            connection.execute(sa.delete(table))
    yield store
    store.engine.dispose()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[CampaignStore]:
    """A campaign store in a new SQLite file."""
    store = CampaignStore(database_url=f"sqlite:///{tmp_path / 'campaigns.db'}")
    store.create_schema()
    yield store
    store.engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> CampaignStore:
    """The campaign store on each supported database."""
    return request.getfixturevalue(f"{request.param}_store")
