"""End-to-end fixtures: the real `dagster-webserver` and `dagster-daemon`, production-like.

Each test gets a DAGSTER_HOME holding `deploy/dagster.yaml` (PostgreSQL storage, the queued run
coordinator with one run per campaign, run monitoring and retries), its own throwaway PostgreSQL
databases for Dagster and for the campaign store (on the server of the `postgres_url` fixture),
and its own queue on fauxqs. The processes run from the repository root with
`-w workspace.yaml`, in their own process group, logging to files under the test's tmp path;
their logs are attached to the report of a failed test.

Building blocks for other scenarios (a crashed run, a restarted daemon):

- `dagster_instance_env`: the environment every process gets (also the CLI's);
- `instance`: the same Dagster instance, opened in the test process;
- `campaign_store`: a `CampaignStore` on the same campaign database;
- `dagster_processes`: starts `webserver()` / `daemon()` (again, after a kill), stops them all;
- `webserver`, `daemon`: the two processes, already started;
- `add_campaign`, `wait_until`, `wait_for_campaign`, `graphql`, `stop_sensor`, `run_cli`,
  `sent_audience_ids`: helpers.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import psycopg
import pytest
from sqlalchemy.engine import make_url

from benchmarks.sqs_endpoints import fauxqs_server
from campaign_pipeline.resources.campaign_store import CampaignStore
from tests.conftest import POSTGRES_ADMIN_URL, drain, free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DAGSTER_YAML = ROOT / "deploy" / "dagster.yaml"
BIN = Path(sys.executable).parent
LOCATION_NAME = "campaign_pipeline"
REPOSITORY_NAME = "__repository__"
ORGANIZATION_ID = "123e4567-e89b-12d3-a456-426614174000"
# CAMPAIGN_PROCESSING_INTERVAL and BACKGROUND_JOB_INTERVAL in the processes' environment (ms).
INTERVAL_MS = 1000
# Starting a run costs seconds here (a new Python process loads the code location), more on a
# busy 2-core machine; waits are bounded by this much on top of what the test itself expects.
RUN_START_SECONDS = 45
LOG_TAIL_LINES = 150

T = TypeVar("T")
LOGS_KEY = pytest.StashKey[dict[str, Path]]()


@pytest.fixture(scope="session")
def sqs_endpoint() -> Iterator[str]:
    """fauxqs on a loopback port: the end-to-end tests check Dagster, the daemon and the API
    around the send, not SQS's semantics (moto's, in the integration tier), and moto's server
    costs CPU in proportion to the messages a queue holds on every call. (fauxqs's FIFO queues
    do not deduplicate; the FIFO scenario here goes through the fault proxy, which does.)"""
    with fauxqs_server() as endpoint:
        yield endpoint


@contextmanager
def throwaway_database(prefix: str) -> Iterator[str]:
    """A new, empty database on the test PostgreSQL server; dropped (connections and all) after."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def instance_environment(home: Path, queue_url: str, sqs_endpoint: str) -> Iterator[dict[str, str]]:
    """Environment for the Dagster processes and the CLI: instance, campaign store and queue.

    `home` (DAGSTER_HOME) gets a copy of `deploy/dagster.yaml`, whose DAGSTER_PG_* variables
    point at a new database; CAMPAIGN_DATABASE_URL points at another (schema created) and
    AWS_SQS_QUEUE_URL at `queue_url`. The sensor and the recovery interval are one second.
    """
    home.mkdir()
    shutil.copy(DEPLOY_DAGSTER_YAML, home / "dagster.yaml")
    with (
        throwaway_database("e2e_dagster") as dagster_url,
        throwaway_database("e2e_campaigns") as campaigns_url,
    ):
        store = CampaignStore(database_url=campaigns_url)
        store.create_schema()
        store.engine.dispose()
        dagster_db = make_url(dagster_url)
        env = {
            name: value
            for name, value in os.environ.items()
            if name
            not in {
                "CAMPAIGN_BATCH_SIZE",
                "CAMPAIGN_SEND_PROCESSES",
                "DAGSTER_URL",
                "PYTEST_CURRENT_TEST",
                "SQS_MAX_CONCURRENT_BATCHES",
            }
        }
        env.update(
            {
                "DAGSTER_HOME": str(home),
                "DAGSTER_PG_HOST": dagster_db.host or "127.0.0.1",
                "DAGSTER_PG_PORT": str(dagster_db.port or 5432),
                "DAGSTER_PG_USER": dagster_db.username or "postgres",
                "DAGSTER_PG_PASSWORD": dagster_db.password or "",
                "DAGSTER_PG_DB": dagster_db.database or "",
                "CAMPAIGN_DATABASE_URL": campaigns_url,
                "AWS_ENDPOINT_URL_SQS": sqs_endpoint,
                "AWS_SQS_QUEUE_URL": queue_url,
                "CAMPAIGN_PROCESSING_INTERVAL": str(INTERVAL_MS),
                "BACKGROUND_JOB_INTERVAL": str(INTERVAL_MS),
                "PYTHONUNBUFFERED": "1",
            }
        )
        yield env


@pytest.fixture
def dagster_instance_env(
    tmp_path: Path, postgres_url: str, sqs_endpoint: str, make_queue: Callable[..., str]
) -> Iterator[dict[str, str]]:
    """`instance_environment` for one test, on a new standard queue (fauxqs).

    (`postgres_url` makes a test without PostgreSQL skip, outside CI.)
    """
    with instance_environment(
        tmp_path / "dagster_home", make_queue(fifo=False), sqs_endpoint
    ) as env:
        yield env


@pytest.fixture
def instance(
    dagster_instance_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[dg.DagsterInstance]:
    """The daemon's Dagster instance (PostgreSQL), opened in the test process."""
    for name, value in dagster_instance_env.items():
        if name.startswith("DAGSTER_"):
            monkeypatch.setenv(name, value)
    with dg.DagsterInstance.get() as instance:
        yield instance


@pytest.fixture
def campaign_store(dagster_instance_env: dict[str, str]) -> Iterator[CampaignStore]:
    """The campaign store the processes use (CAMPAIGN_DATABASE_URL of `dagster_instance_env`)."""
    store = CampaignStore(database_url=dagster_instance_env["CAMPAIGN_DATABASE_URL"])
    yield store
    store.engine.dispose()


@dataclass
class DagsterProcess:
    """A started Dagster process (its own process group) and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path
    url: str | None = None
    terminated: bool = False

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.process.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last `lines` lines of its log."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        """Fail the test, with the log, if the process has exited."""
        if not self.alive():
            pytest.fail(
                f"{self.name} exited with status {self.process.returncode}:\n{self.log_tail()}"
            )

    def kill(self) -> None:
        """SIGKILL the process alone (not its children), as a crash would, and reap it."""
        if self.alive():
            self.process.kill()
        self.process.wait(timeout=10)

    def terminate(self) -> None:
        """Send SIGTERM once (a second one would cut the process's own shutdown short)."""
        if self.alive() and not self.terminated:
            self.terminated = True
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM, then SIGKILL after `timeout`; then the same for what is left of its group.

        A stopped daemon leaves its code server running until that server's runs end (the
        default run launcher runs them in that server's children), so the group is ended too.
        """
        if self.alive():
            self.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process.wait()
        _end_process_group(self.process.pid)


def _end_process_group(pgid: int, timeout: float = 10) -> None:
    """SIGTERM every process left in the group, then SIGKILL those that outlive `timeout`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


@dataclass
class DagsterProcesses:
    """Starts `dagster-webserver` and `dagster-daemon` for one test and stops them all after."""

    env: dict[str, str]
    log_dir: Path
    logs: dict[str, Path]
    started: list[DagsterProcess] = field(default_factory=list)

    def _start(self, name: str, command: Sequence[str], url: str | None = None) -> DagsterProcess:
        count = sum(1 for process in self.started if process.name.startswith(name))
        label = name if not count else f"{name}-{count + 1}"
        log = self.log_dir / f"{label}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                list(command),
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                # Its own group: its code servers and run workers are ended with it.
                start_new_session=True,
            )
        started = DagsterProcess(label, process, log, url)
        self.started.append(started)
        self.logs[label] = log
        return started

    def webserver(self, timeout: float = 90) -> DagsterProcess:
        """Start `dagster-webserver` on a free port; returns once the code location has loaded."""
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [str(BIN / "dagster-webserver"), "-w", "workspace.yaml"]
        process = self._start("webserver", [*command, "-h", "127.0.0.1", "-p", str(port)], url)
        wait_until(
            lambda: _location_loaded(url),
            timeout,
            f"the webserver at {url} to load the code location",
            processes=[process],
        )
        return process

    def daemon(self) -> DagsterProcess:
        """Start `dagster-daemon run` (sensors, run queue, monitoring, retries)."""
        return self._start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"])

    def stop_all(self) -> None:
        """Stop every process started: SIGTERM to all at once, then wait for each in turn."""
        for process in self.started:
            process.terminate()
        for process in reversed(self.started):
            process.stop()


@pytest.fixture
def dagster_processes(
    dagster_instance_env: dict[str, str], tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[DagsterProcesses]:
    """Starts the Dagster processes of a test on `dagster_instance_env`; stops them after it."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    logs: dict[str, Path] = {}
    request.node.stash[LOGS_KEY] = logs
    processes = DagsterProcesses(dagster_instance_env, log_dir, logs)
    try:
        yield processes
    finally:
        processes.stop_all()


@pytest.fixture
def webserver(dagster_processes: DagsterProcesses) -> DagsterProcess:
    """A running `dagster-webserver` whose GraphQL API has loaded the code location (`.url`)."""
    return dagster_processes.webserver()


@pytest.fixture
def daemon(dagster_processes: DagsterProcesses) -> DagsterProcess:
    """A running `dagster-daemon`."""
    return dagster_processes.daemon()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the tail of every Dagster process log to a failed test's report."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for name, log in item.stash.get(LOGS_KEY, {}).items():
            text = log.read_text(errors="replace") if log.exists() else "(no log)"
            tail = "\n".join(text.splitlines()[-LOG_TAIL_LINES:])
            report.sections.append((f"{name} log ({log})", tail))


def graphql(url: str, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """POST a GraphQL request to the webserver at `url`; returns `data` (fails on `errors`)."""
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": query, "variables": dict(variables or {})}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.loads(response.read())
    assert not body.get("errors"), body["errors"]
    return body["data"]


def _location_loaded(url: str) -> bool:
    query = """
    { workspaceOrError { __typename ... on Workspace { locationEntries {
        name loadStatus locationOrLoadError { __typename ... on PythonError { message } }
    } } } }
    """
    try:
        data = graphql(url, query)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False
    for entry in data["workspaceOrError"].get("locationEntries", []):
        if entry["name"] == LOCATION_NAME and entry["loadStatus"] == "LOADED":
            loaded = entry["locationOrLoadError"]
            if loaded and loaded["__typename"] == "PythonError":
                pytest.fail(f"the code location failed to load: {loaded['message']}")
            return True
    return False


def stop_sensor(url: str, name: str = "asset_generated_campaigns_sensor") -> None:
    """Stop a sensor through GraphQL, so that only the test launches runs (state is stored)."""
    selector = {
        "repositoryLocationName": LOCATION_NAME,
        "repositoryName": REPOSITORY_NAME,
        "sensorName": name,
    }
    sensor = graphql(
        url,
        "query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) "
        "{ __typename ... on Sensor { id } ... on Error { message } } }",
        {"s": selector},
    )["sensorOrError"]
    assert sensor["__typename"] == "Sensor", sensor
    stopped = graphql(
        url,
        "mutation($id: String) { stopSensor(id: $id) { __typename "
        "... on StopSensorMutationResult { instigationState { status } } "
        "... on Error { message } } }",
        {"id": sensor["id"]},
    )["stopSensor"]
    assert stopped.get("instigationState", {}).get("status") == "STOPPED", stopped


def campaign_runs(url: str, campaign_id: str) -> list[dict[str, Any]]:
    """The campaign's runs (by tag), newest first: id, status, start and end times."""
    data = graphql(
        url,
        "query($tags: [ExecutionTag!]) { runsOrError(filter: {tags: $tags}) { __typename "
        "... on Runs { results { runId status startTime endTime } } } }",
        {"tags": [{"key": "campaign_id", "value": campaign_id}]},
    )
    return data["runsOrError"]["results"]


def wait_until(
    condition: Callable[[], T | None],
    timeout: float,
    what: str,
    processes: Sequence[DagsterProcess] = (),
    interval: float = 0.25,
) -> T:
    """Poll `condition` until it returns something truthy, and return that.

    Fails the test after `timeout` seconds, or as soon as one of `processes` has exited.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        for process in processes:
            process.check_alive()
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def add_campaign(
    store: CampaignStore,
    valid: int,
    invalid: int = 0,
    status: str = "asset_generated",
    message_content: str = "Hello {{name}}!",
) -> str:
    """A text campaign with `valid` E.164 recipients and `invalid` ones without a '+'."""
    campaign_id = store.campaigns.add(
        organization_id=ORGANIZATION_ID,
        name="e2e",
        status=status,
        message_type="text",
        message_content=message_content,
    )
    phones = [f"+1555{i:07d}" for i in range(valid)] + [f"555{i:07d}" for i in range(invalid)]
    store.campaigns.add_recipients(
        campaign_id, [{"phone_number": phone, "name": f"R{i}"} for i, phone in enumerate(phones)]
    )
    return campaign_id


def wait_for_campaign(
    store: CampaignStore,
    campaign_id: str,
    timeout: float,
    processes: Sequence[DagsterProcess] = (),
    done: Callable[[dict[str, int]], bool] = lambda counts: counts["pending"] == 0,
) -> dict[str, int]:
    """The campaign's recipient counts by status once `done(counts)` (default: none pending)."""

    def finished() -> dict[str, int] | None:
        counts = store.audience.counts(campaign_id)
        return counts if done(counts) else None

    return wait_until(
        finished,
        timeout,
        f"campaign {campaign_id} to be processed",
        processes,
        interval=0.5,
    )


def audience_outcomes(store: CampaignStore, campaign_id: str) -> list[dict[str, Any]]:
    """Every recipient's id, status, SQS message id and failure reason."""
    from campaign_pipeline.store.schema import campaign_audience

    query = campaign_audience.select().where(campaign_audience.c.campaign_id == campaign_id)
    with store.engine.connect() as connection:
        return [dict(row) for row in connection.execute(query).mappings()]


def sent_audience_ids(sqs_client: object, queue_url: str) -> tuple[Counter[str], set[str]]:
    """Drain the queue: how often each campaignAudienceId arrived, and the SQS message ids."""
    messages = drain(sqs_client, queue_url)
    counts = Counter(json.loads(message["Body"])["campaignAudienceId"] for message in messages)
    return counts, {message["MessageId"] for message in messages}


def assert_every_recipient_accounted_for(
    store: CampaignStore, campaign_id: str, sent: Counter[str], message_ids: set[str]
) -> None:
    """Each recipient is ready_to_send with a message id that was in the queue, exactly once,
    or failed with a reason and never sent.
    """
    outcomes = audience_outcomes(store, campaign_id)
    assert outcomes
    for row in outcomes:
        if row["status"] == "ready_to_send":
            assert row["sqs_message_id"] in message_ids, row
            assert sent[row["id"]] == 1, row
        else:
            assert row["status"] == "failed", row
            assert row["failure_reason"], row
            assert sent[row["id"]] == 0, row
    assert set(sent) == {row["id"] for row in outcomes if row["status"] == "ready_to_send"}


def run_cli(
    *args: str, env: Mapping[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run `campaign-pipeline ARGS...` as a subprocess from the repository root."""
    return subprocess.run(
        [str(BIN / "campaign-pipeline"), *args],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
