"""The HTTP API as its callers meet it: `serve-api` as a real server, driven over HTTP.

One stack for the module: PostgreSQL (Dagster's storage and the campaign store), fauxqs as SQS,
a real `dagster-webserver` and `dagster-daemon` (the processing sensors stopped, so only
the API starts runs), and `campaign-pipeline serve-api` as a subprocess with one planted operator
token and one read-only token given as its SHA-256 in a file. A few tests start a second server
whose Dagster, database or queue is gone.
"""

import hashlib
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
import requests
import sqlalchemy as sa

from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.store.schema import campaigns
from tests.conftest import REGION, free_port, wait_for_port
from tests.e2e.conftest import (
    BIN,
    LOGS_KEY,
    ROOT,
    RUN_START_SECONDS,
    DagsterProcess,
    DagsterProcesses,
    add_campaign,
    assert_every_recipient_accounted_for,
    audience_outcomes,
    instance_environment,
    run_cli,
    sent_audience_ids,
    stop_sensor,
    wait_for_campaign,
    wait_until,
)
from tests.support.reliability_log import log_exposure_sweep

# Planted: no log, no run, no row may ever hold them.
OPERATOR_TOKEN = f"planted-operator-{uuid.uuid4().hex}"
READ_TOKEN = f"planted-reader-{uuid.uuid4().hex}"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
UNAUTHENTICATED = {"error": "authentication required: send Authorization: Bearer <token>"}
# The load check: this many requests in flight for this long (LOAD_SECONDS overrides).
LOAD_CONCURRENCY = 50
LOAD_SECONDS = float(os.environ.get("API_LOAD_SECONDS", "20"))


class ApiClient(requests.Session):
    """A `requests` session on the API's base URL, sending a Bearer token when given one."""

    def __init__(self, base_url: str, token: str | None) -> None:
        super().__init__()
        self.base_url = base_url
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        return super().request(method, f"{self.base_url}{url}", *args, **kwargs)


@dataclass
class ApiStack:
    """The module's processes, their environment, and clients for the API and the store."""

    env: dict[str, str]
    processes: DagsterProcesses
    dagster_url: str
    api_url: str
    api_log: Path
    store: CampaignStore
    sqs: Any

    def client(self, token: str | None = OPERATOR_TOKEN, url: str | None = None) -> ApiClient:
        """An HTTP client for the API, sending `token` as a Bearer token."""
        return ApiClient(url or self.api_url, token)


def start_api(processes: DagsterProcesses, env: dict[str, str], name: str) -> tuple[str, Path]:
    """`campaign-pipeline serve-api` on a free port, in `processes`' care; its URL and log."""
    port = free_port()
    log = processes.log_dir / f"{name}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(BIN / "campaign-pipeline"), "serve-api", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started = DagsterProcess(name, process, log, f"http://127.0.0.1:{port}")
    processes.started.append(started)
    processes.logs[name] = log
    wait_for_port(port, timeout=60)
    started.check_alive()
    return f"http://127.0.0.1:{port}", log


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory, postgres_url: str, sqs_endpoint: str
) -> Iterator[ApiStack]:
    """The module's stack, started once; stopped after its last test."""
    sqs = boto3.client(
        "sqs",
        region_name=REGION,
        endpoint_url=sqs_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    queue_url = sqs.create_queue(QueueName=f"api-{uuid.uuid4().hex[:12]}")["QueueUrl"]
    root = tmp_path_factory.mktemp("http_api")
    tokens_file = root / "read-tokens"
    tokens_file.write_text(
        "# the read-only token, as its digest\n"
        f"sha256:{hashlib.sha256(READ_TOKEN.encode()).hexdigest()}\n"
    )
    with instance_environment(root / "dagster_home", queue_url, sqs_endpoint) as env:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            env.pop(name, None)
        env.update(
            {
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_REGION": REGION,
                "AWS_DEFAULT_REGION": REGION,
                "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            }
        )
        log_dir = root / "logs"
        log_dir.mkdir()
        processes = DagsterProcesses(env, log_dir, {})
        store = CampaignStore(database_url=env["CAMPAIGN_DATABASE_URL"])
        try:
            webserver = processes.webserver()
            assert webserver.url
            for sensor in ("asset_generated_campaigns_sensor", "resume_stalled_campaigns_sensor"):
                stop_sensor(webserver.url, sensor)
            processes.daemon()
            env["DAGSTER_URL"] = webserver.url
            api_env = env | {
                "CAMPAIGN_API_TOKENS": OPERATOR_TOKEN,
                "CAMPAIGN_API_READ_TOKENS_FILE": str(tokens_file),
            }
            api_url, api_log = start_api(processes, api_env, "serve-api")
            yield ApiStack(env, processes, webserver.url, api_url, api_log, store, sqs)
        finally:
            processes.stop_all()
            store.engine.dispose()


@pytest.fixture(autouse=True)
def attach_logs(request: pytest.FixtureRequest, api: ApiStack) -> None:
    """A failed test's report carries the tails of the servers' logs."""
    request.node.stash[LOGS_KEY] = api.processes.logs


def cli_json(api: ApiStack, *args: str) -> Any:
    result = run_cli(*args, "--json", env=api.env)
    assert result.returncode in (0, 1), result.stderr
    return json.loads(result.stdout)


def test_health_needs_no_token_and_says_what_answers(api: ApiStack) -> None:
    with api.client(token=None) as client:
        response = client.get("/api/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "campaign_store": True,
        "sqs": True,
        "dagster": True,
    }


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        f"Bearer {OPERATOR_TOKEN}x",
        f"Bearer {OPERATOR_TOKEN[:-1]}",
        "",
        "Bearer",
        f"Basic {OPERATOR_TOKEN}",
        f"Token {OPERATOR_TOKEN}",
        OPERATOR_TOKEN,
        f"Bearer sha256:{hashlib.sha256(READ_TOKEN.encode()).hexdigest()}",
    ],
    ids=["none", "longer", "shorter", "empty", "scheme-only", "basic", "token", "bare", "digest"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/campaigns/sqs-status"),
        ("GET", f"/api/campaigns/{UNKNOWN_ID}"),
        ("POST", f"/api/campaigns/{UNKNOWN_ID}/process-messages"),
        ("POST", "/api/campaigns/not-a-uuid/pause"),
    ],
)
def test_every_wrong_token_is_401_without_a_hint(
    api: ApiStack, authorization: str | None, method: str, path: str
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    with api.client(token=None) as client:
        response = client.request(method, path, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == UNAUTHENTICATED


def test_a_read_token_reads_and_may_not_operate(api: ApiStack) -> None:
    campaign_id = add_campaign(api.store, valid=3, status="draft")
    with api.client(READ_TOKEN) as client:
        assert client.get(f"/api/campaigns/{campaign_id}").status_code == 200
        assert client.get(f"/api/campaigns/{campaign_id}/preview").status_code == 200
        assert client.get("/api/campaigns/sqs-status").status_code == 200
        for action in ("process-messages", "pause", "resume", "cancel"):
            response = client.post(f"/api/campaigns/{campaign_id}/{action}")
            assert response.status_code == 403, response.text
            assert "may only read" in response.json()["error"]
    assert api.store.campaigns.get(campaign_id)["status"] == "draft"


def test_sqs_status_is_the_cli_document(api: ApiStack) -> None:
    with api.client() as client:
        response = client.get("/api/campaigns/sqs-status")
    assert response.status_code == 200
    document = response.json()
    assert document == cli_json(api, "sqs-status")
    assert document["reachable"] and document["queue_url"] == api.env["AWS_SQS_QUEUE_URL"]
    assert "testing" not in response.text  # the access key and secret


def test_process_messages_queues_every_recipient_once(api: ApiStack) -> None:
    campaign_id = add_campaign(api.store, valid=150, invalid=5)
    with api.client() as client:
        response = client.post(f"/api/campaigns/{campaign_id}/process-messages")
        assert response.status_code == 202, response.text
        accepted = response.json()
        again = client.post(f"/api/campaigns/{campaign_id}/process-messages")
    assert accepted["campaignId"] == campaign_id and accepted["action"] == "process"
    assert accepted["status"] in ("QUEUED", "NOT_STARTED", "STARTING", "STARTED")
    assert accepted["url"] == f"{api.dagster_url}/runs/{accepted['runId']}"
    assert again.status_code == 409
    assert f"already has a run in progress: {accepted['runId']}" in again.json()["error"]

    counts = wait_for_campaign(api.store, campaign_id, RUN_START_SECONDS + 60)
    assert counts == {"pending": 0, "ready_to_send": 150, "failed": 5}
    sent, message_ids = sent_audience_ids(api.sqs, api.env["AWS_SQS_QUEUE_URL"])
    assert_every_recipient_accounted_for(api.store, campaign_id, sent, message_ids)

    with api.client() as client:
        finished = client.post(f"/api/campaigns/{campaign_id}/process-messages")
        # Every recipient is recorded before the run's last step ends; the run ends after it
        # (and the API caches a campaign's runs for a second).
        document = wait_until(
            lambda: (
                (answer := client.get(f"/api/campaigns/{campaign_id}").json())["runs"]
                and answer["runs"][0]["status"] == "SUCCESS"
                and answer
            ),
            30,
            "the run to end SUCCESS in the campaign's status",
        )
    assert finished.status_code == 409
    assert "no pending recipients" in finished.json()["error"]
    assert document["counts"] == counts
    assert [run["run_id"] for run in document["runs"]] == [accepted["runId"]]
    assert document["runs"][0]["status"] == "SUCCESS"
    assert document["runs_error"] is None
    # The CLI reads the same instance directly; the documents agree.
    assert cli_json(api, "status", campaign_id) == document


@pytest.mark.parametrize(
    ("status", "send_at", "code", "fragment"),
    [
        ("draft", None, 409, "only 'asset_generated' campaigns"),
        ("cancelled", None, 409, "is cancelled; it is never processed again"),
        ("paused", None, 409, "is paused"),
        ("asset_generated", timedelta(days=1), 409, "is scheduled for"),
    ],
)
def test_process_messages_refuses_what_cannot_be_processed(
    api: ApiStack, status: str, send_at: timedelta | None, code: int, fragment: str
) -> None:
    campaign_id = add_campaign(api.store, valid=2, status=status)
    if send_at:
        with api.store.engine.begin() as connection:
            connection.execute(
                sa.update(campaigns)
                .where(campaigns.c.id == campaign_id)
                .values(send_at=datetime.now(UTC) + send_at)
            )
    with api.client() as client:
        response = client.post(f"/api/campaigns/{campaign_id}/process-messages")
    assert response.status_code == code, response.text
    assert fragment in response.json()["error"]
    assert api.store.campaigns.get(campaign_id)["status"] == status


@pytest.mark.parametrize(
    ("method", "path", "code", "error"),
    [
        ("POST", f"/api/campaigns/{UNKNOWN_ID}/process-messages", 404, "does not exist"),
        ("GET", f"/api/campaigns/{UNKNOWN_ID}", 404, "does not exist"),
        ("GET", f"/api/campaigns/{UNKNOWN_ID}/preview", 404, "does not exist"),
        ("POST", f"/api/campaigns/{UNKNOWN_ID}/pause", 404, "does not exist"),
        ("POST", "/api/campaigns/12345/process-messages", 422, "campaign id '12345' is not a UUID"),
        ("GET", "/api/campaigns/12345", 422, "is not a UUID"),
        ("GET", f"/api/campaigns/{UNKNOWN_ID}/preview?limit=-1", 422, "query limit"),
        ("GET", f"/api/campaigns/{UNKNOWN_ID}/preview?limit=101", 422, "query limit"),
        ("GET", "/api/nothing-here", 404, "is not an endpoint of this API"),
        ("DELETE", f"/api/campaigns/{UNKNOWN_ID}", 405, "DELETE is not allowed"),
    ],
)
def test_errors_are_one_line_with_the_status_that_says_why(
    api: ApiStack, method: str, path: str, code: int, error: str
) -> None:
    with api.client() as client:
        response = client.request(method, path)
    assert response.status_code == code, response.text
    body = response.json()
    assert list(body) == ["error"] and "\n" not in body["error"]
    assert error in body["error"]


def test_bodies_are_checked_and_bounded(api: ApiStack) -> None:
    campaign_id = add_campaign(api.store, valid=2, status="paused")
    path = f"/api/campaigns/{campaign_id}/resume"
    with api.client() as client:
        not_json = client.post(path, data=b"{", headers={"Content-Type": "application/json"})
        wrong_type = client.post(path, json={"accept_invalid": "maybe"})
        unknown = client.post(path, json={"run_config": {"ops": {}}})
        too_big = client.post(path, json={"accept_invalid": True, "pad": "x" * 20_000})
        streamed = client.post(path, data=iter([b'{"accept_invalid": ', b" " * 20_000]))
    assert not_json.status_code == 422 and "not valid JSON" in not_json.json()["error"]
    assert wrong_type.status_code == 422 and "accept_invalid" in wrong_type.json()["error"]
    assert unknown.status_code == 422 and "run_config" in unknown.json()["error"]
    assert too_big.status_code == 413 and "over 16384 bytes" in too_big.json()["error"]
    assert streamed.status_code == 413
    assert api.store.campaigns.get(campaign_id)["status"] == "paused"


def test_pause_resume_cancel_answer_as_the_commands_do(api: ApiStack) -> None:
    campaign_id = add_campaign(api.store, valid=2)
    path = f"/api/campaigns/{campaign_id}"
    with api.client() as client:
        paused = client.post(f"{path}/pause")
        again = client.post(f"{path}/pause")
        resumed = client.post(f"{path}/resume", json={"accept_invalid": False})
        cancelled = client.post(f"{path}/cancel")
        refused = client.post(f"{path}/resume")
    assert paused.status_code == 200, paused.text
    assert paused.json() | {"message": ""} == {
        "campaign_id": campaign_id,
        "command": "pause",
        "before": "asset_generated",
        "after": "paused",
        "changed": True,
        "message": "",
    }
    assert again.status_code == 200 and not again.json()["changed"]
    assert resumed.status_code == 200 and resumed.json()["after"] == "asset_generated"
    assert cancelled.status_code == 200 and cancelled.json()["after"] == "cancelled"
    assert refused.status_code == 409, refused.text
    row = api.store.campaigns.get(campaign_id)
    assert row["status"] == "cancelled"
    assert row["paused_by"] == row["cancelled_by"] == "api token #1 from 127.0.0.1"
    # The same refusal, word for word, from the command line.
    cli = run_cli("resume", campaign_id, env=api.env)
    assert cli.returncode == 2 and refused.json()["error"] in cli.stderr


def test_preview_is_the_cli_document(api: ApiStack) -> None:
    campaign_id = add_campaign(api.store, valid=7, invalid=2, status="draft")
    with api.client() as client:
        response = client.get(f"/api/campaigns/{campaign_id}/preview", params={"limit": 3})
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["recipients"] == 9 and document["valid"] == 7 and len(document["sample"]) == 3
    assert document == cli_json(api, "preview", campaign_id, "--limit", "3")


def test_frequency_capped_recipients_show_in_the_preview_and_the_campaign_document(
    api: ApiStack,
) -> None:
    """An organization capped at 1/1h sends a second campaign to the same numbers: the API's
    preview counts the capped ones first, its campaign document counts them by code after."""
    organization = f"org-{uuid.uuid4().hex[:8]}"
    api.store.organizations.set_frequency_cap(organization, "1/1h")
    numbers = [f"+4479463{index:05d}" for index in range(30)]

    def add(recipients: list[str]) -> str:
        campaign_id = api.store.campaigns.add(
            organization_id=organization,
            name="capped",
            status="asset_generated",
            message_type="template",
            template_name="spring_sale",
            template_language="en",
        )
        api.store.campaigns.add_recipients(
            campaign_id, [{"phone_number": number, "name": "R"} for number in recipients]
        )
        return campaign_id

    first, second = add(numbers[:20]), add(numbers)
    with api.client() as client:
        assert client.post(f"/api/campaigns/{first}/process-messages").status_code == 202
        wait_for_campaign(api.store, first, RUN_START_SECONDS + 60)
        preview = client.get(f"/api/campaigns/{second}/preview").json()
        assert preview["skipped"]["frequency_capped"] == 20, preview
        assert (preview["recipients"], preview["valid"]) == (30, 10)
        assert client.post(f"/api/campaigns/{second}/process-messages").status_code == 202
        counts = wait_for_campaign(api.store, second, RUN_START_SECONDS + 60)
        document = wait_until(
            lambda: (
                (answer := client.get(f"/api/campaigns/{second}").json())["runs"]
                and answer["runs"][0]["status"] == "SUCCESS"
                and answer
            ),
            30,
            "the second run to end SUCCESS in the campaign's status",
        )
    assert counts == {"pending": 0, "ready_to_send": 10, "failed": 20}
    assert document["failed_by_code"] == {"frequency_capped": 20}
    assert cli_json(api, "status", second) == document
    sent, message_ids = sent_audience_ids(api.sqs, api.env["AWS_SQS_QUEUE_URL"])
    for campaign_id in (first, second):
        ids = {row["id"] for row in audience_outcomes(api.store, campaign_id)}
        mine = Counter({id_: count for id_, count in sent.items() if id_ in ids})
        assert_every_recipient_accounted_for(api.store, campaign_id, mine, message_ids)


def test_suppressions_are_listed_with_a_read_token_and_changed_with_an_operator_token(
    api: ApiStack,
) -> None:
    """The suppression endpoints as `suppress` does it: all or nothing, recorded by token."""
    organization = f"org-{uuid.uuid4().hex[:8]}"
    path = f"/api/organizations/{organization}/suppressions"
    numbers = ["+14155550123", "+14155550124"]
    with api.client(READ_TOKEN) as reader, api.client() as operator, api.client(None) as anyone:
        assert anyone.get(path).status_code == 401
        refused = reader.post(path, json={"phone_numbers": numbers})
        assert refused.status_code == 403, refused.text
        added = operator.post(path, json={"phone_numbers": numbers, "reason": "replied STOP"})
        assert added.status_code == 200, added.text
        assert added.json() == {
            "organization_id": organization,
            "scope": "marketing",
            "added": 2,
            "present": 0,
        }
        widened = operator.post(path, json={"phone_numbers": numbers[:1], "scope": "all"})
        assert widened.json()["present"] == 1
        malformed = operator.post(path, json={"phone_numbers": ["+14155550125", "4155550126"]})
        assert malformed.status_code == 422
        assert "4155550126" not in malformed.text and set(malformed.json()) == {"error"}
        listed = reader.get(path)
        assert listed.status_code == 200, listed.text
        assert [(s["phone_number"], s["scope"], s["reason"]) for s in listed.json()] == [
            (numbers[0], "all", "replied STOP"),
            (numbers[1], "marketing", "replied STOP"),
        ]
        assert re.fullmatch(r"api token #\d+ from 127\.0\.0\.1", listed.json()[0]["source"])
        assert cli_json(api, "suppress", "list", organization) == listed.json()
        assert reader.delete(f"{path}/%2B14155550123").status_code == 403
        removed = operator.delete(f"{path}/%2B14155550123")
        assert removed.status_code == 200, removed.text
        assert removed.json() == {"organization_id": organization, "removed": 1}
        gone = operator.delete(f"{path}/%2B14155550123")
        assert gone.status_code == 404
        assert gone.json() == {"error": f"***23 is not suppressed for organization {organization}"}
        assert [s["phone_number"] for s in reader.get(path).json()] == numbers[1:]


def test_a_server_without_dagster_or_sqs_says_so(api: ApiStack) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    env = api.env | {
        "CAMPAIGN_API_TOKENS": OPERATOR_TOKEN,
        "DAGSTER_URL": closed,
        "AWS_ENDPOINT_URL_SQS": closed,
    }
    url, _ = start_api(api.processes, env, "serve-api-no-dagster")
    campaign_id = add_campaign(api.store, valid=2)
    with api.client(url=url) as client:
        health = client.get("/api/health")
        process = client.post(f"/api/campaigns/{campaign_id}/process-messages")
        status = client.get(f"/api/campaigns/{campaign_id}")
        sqs = client.get("/api/campaigns/sqs-status")
    assert health.status_code == 200
    assert health.json() == {
        "status": "degraded",
        "campaign_store": True,
        "sqs": False,
        "dagster": False,
    }
    assert process.status_code == 503
    assert f"cannot reach the Dagster webserver at {closed}" in process.json()["error"]
    assert status.status_code == 200 and status.json()["runs"] == []
    assert "cannot reach the Dagster webserver" in status.json()["runs_error"]
    assert sqs.status_code == 503
    assert sqs.json()["reachable"] is False and sqs.json()["error"]
    assert api.store.campaigns.get(campaign_id)["status"] == "asset_generated"


def test_a_server_whose_database_is_gone_answers_503(api: ApiStack) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/gone_{uuid.uuid4().hex[:8]}"
    env = api.env | {"CAMPAIGN_API_TOKENS": OPERATOR_TOKEN, "CAMPAIGN_DATABASE_URL": url}
    api_url, _ = start_api(api.processes, env, "serve-api-no-database")
    with api.client(url=api_url) as client:
        health = client.get("/api/health")
        status = client.get(f"/api/campaigns/{UNKNOWN_ID}")
        process = client.post(f"/api/campaigns/{UNKNOWN_ID}/process-messages")
    assert health.status_code == 200 and health.json()["campaign_store"] is False
    for response in (status, process):
        assert response.status_code == 503, response.text
        assert "the campaign database" in response.json()["error"]
        assert "does not exist" in response.json()["error"]


def test_a_server_without_tokens_refuses_to_start(api: ApiStack) -> None:
    env = {k: v for k, v in api.env.items() if not k.startswith("CAMPAIGN_API_")}
    result = run_cli("serve-api", "--port", str(free_port()), env=env, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "campaign-pipeline: error: no API token is configured: set CAMPAIGN_API_TOKENS "
        "(comma-separated) or CAMPAIGN_API_TOKENS_FILE (one token or sha256:<hex> per line)"
    ]


def readme_curl_lines() -> list[str]:
    """The API's `curl` lines: the README's, then those of docs/operations.md's HTTP API section.

    In that order, each once: both show process-messages, which a second time would be refused.
    """
    readme = (ROOT / "README.md").read_text()
    operations = (ROOT / "docs" / "operations.md").read_text()
    section = operations.split("\n## The HTTP API\n", 1)[1].split("\n## ", 1)[0]
    lines = [
        line
        for line in readme.splitlines() + section.splitlines()
        if line.startswith("curl ") and '"$API/' in line
    ]
    return list(dict.fromkeys(lines))


def test_the_readme_curl_lines_work_as_shown(api: ApiStack) -> None:
    lines = readme_curl_lines()
    assert any("/process-messages" in line for line in lines)
    assert any("/sqs-status" in line for line in lines)
    campaign_id = add_campaign(api.store, valid=3)
    env = api.env | {"API": api.api_url, "TOKEN": OPERATOR_TOKEN, "CAMPAIGN_ID": campaign_id}
    for line in lines:
        result = subprocess.run(
            ["bash", "-c", line], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, f"{line}: {result.stdout} {result.stderr}"
        assert list(json.loads(result.stdout)) != ["error"], line
    assert api.store.campaigns.get(campaign_id)["status"] == "cancelled"


def test_the_openapi_document_holds_under_fuzzing(api: ApiStack, tmp_path: Path) -> None:
    """schemathesis, every check: no 5xx, every answer as documented, auth enforced."""
    result = subprocess.run(
        [
            str(BIN / "schemathesis"),
            "run",
            f"{api.api_url}/api/openapi.json",
            "--checks",
            "all",
            "--header",
            f"Authorization: Bearer {OPERATOR_TOKEN}",
            "--max-examples",
            "25",
            "--seed",
            "1",
            "--request-timeout",
            "30",
            "--no-color",
            "--report-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=api.env,
        cwd=tmp_path,  # its cache of failures stays out of the repository
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output.replace(OPERATOR_TOKEN, "<token>")


def test_fifty_concurrent_readers_for_twenty_seconds(
    api: ApiStack, capsys: pytest.CaptureFixture[str]
) -> None:
    """The load check: status and sqs-status, 50 in flight; no error; throughput and p99."""
    campaign_id = add_campaign(api.store, valid=20, status="draft")
    paths = {"status": f"/api/campaigns/{campaign_id}", "sqs-status": "/api/campaigns/sqs-status"}

    latencies: dict[str, list[float]] = {name: [] for name in paths}
    failures: list[str] = []
    deadline = time.monotonic() + LOAD_SECONDS

    def reader(index: int) -> None:
        # Threads with a connection each: httpx's async pool, tried first, was the bottleneck.
        names = list(paths)
        with api.client(READ_TOKEN) as client:
            while time.monotonic() < deadline:
                name = names[index % 2]
                index += 1
                started = time.perf_counter()
                response = client.get(paths[name])
                latencies[name].append(time.perf_counter() - started)
                if response.status_code != 200:
                    failures.append(f"{name}: {response.status_code} {response.text}")

    readers = [threading.Thread(target=reader, args=(i,)) for i in range(LOAD_CONCURRENCY)]
    started = time.monotonic()
    for thread in readers:
        thread.start()
    for thread in readers:
        thread.join()
    elapsed = time.monotonic() - started
    assert not failures, failures[:5]

    def summary(values: list[float]) -> str:
        p99 = statistics.quantiles(values, n=100)[98]
        return (
            f"{len(values)} ({len(values) / elapsed:.0f}/s), "
            f"p50 {statistics.median(values) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
        )

    every = [value for values in latencies.values() for value in values]
    with capsys.disabled():
        sys.stdout.write(
            f"\nAPI load check, {LOAD_CONCURRENCY} in flight for {elapsed:.1f} s: "
            f"all {summary(every)}; "
            + "; ".join(f"{name} {summary(values)}" for name, values in latencies.items())
            + "\n"
        )


# What a request log line may say of its token (docs/operations.md): its place in the
# configuration or its digest's first 8 digits; `unknown` for one it does not know, `none` when
# a route needed one and none was sent, `-` when no route looked (health, a 404).
LOGGED_TOKEN = re.compile(r"#\d+|sha256:[0-9a-fA-F]{8}|unknown|none|-")


def test_no_token_is_in_any_log_or_in_dagster(api: ApiStack) -> None:
    """After requests with each kind of token (made here, so the test stands alone), neither
    planted token, nor any part of a presented one, is anywhere it could leak."""
    campaign_id = add_campaign(api.store, valid=3)
    with api.client() as client:
        accepted = client.post(f"/api/campaigns/{campaign_id}/process-messages")
        assert accepted.status_code == 202, accepted.text
    with api.client(READ_TOKEN) as client:
        assert client.get(f"/api/campaigns/{campaign_id}").status_code == 200
    with api.client(f"{OPERATOR_TOKEN}-but-not-quite") as client:
        assert client.get(f"/api/campaigns/{campaign_id}").status_code == 401
    # The run's processes (daemon, run worker) have logged what they do with it.
    wait_for_campaign(api.store, campaign_id, RUN_START_SECONDS + 60)
    planted = (OPERATOR_TOKEN, READ_TOKEN)
    searched = 0
    for name, log in api.processes.logs.items():
        searched += 1
        text = log.read_text(errors="replace")
        assert text, name
        for token in planted:
            assert token not in text, f"a token is in the {name} log"
    request_lines = [line for line in api.api_log.read_text().splitlines() if " ms token=" in line]
    logged = [line.split(" token=", 1)[1].split(" ", 1)[0] for line in request_lines]
    assert logged and all(LOGGED_TOKEN.fullmatch(token) for token in logged), sorted(set(logged))
    assert any(
        f"/{campaign_id}/process-messages 202 " in line and "token=#1 " in line
        for line in request_lines
    )
    assert any("token=sha256:" in line for line in request_lines)
    assert any(" 401 " in line and "token=unknown " in line for line in request_lines)
    for token in planted:
        # Not the whole token, nor a telling piece of it (its first or last 8 characters).
        for piece in (token, token[:8], token[-8:]):
            assert piece not in api.api_log.read_text(), piece
    home = Path(api.env["DAGSTER_HOME"])
    for path in home.rglob("*"):
        if path.is_file():
            searched += 1
            content = path.read_bytes()
            for token in planted:
                assert token.encode() not in content, path
    dagster_db = (
        f"postgresql://{api.env['DAGSTER_PG_USER']}@{api.env['DAGSTER_PG_HOST']}:"
        f"{api.env['DAGSTER_PG_PORT']}/{api.env['DAGSTER_PG_DB']}"
    )
    campaigns_db = api.env["CAMPAIGN_DATABASE_URL"].replace("+psycopg", "")
    for url in (dagster_db, campaigns_db):
        with psycopg.connect(url) as connection:
            tables = connection.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            ).fetchall()
            assert len(tables) > 1
            for (table,) in tables:
                rows = connection.execute(
                    f'SELECT t::text FROM "{table}" t'  # names from the catalog
                ).fetchall()
                for (row,) in rows:
                    searched += 1
                    for token in planted:
                        assert token not in row, f"a token is in {table}"
    log_exposure_sweep(
        "the HTTP API after requests with an operator, a read-only and an unknown token",
        planted=[
            "an operator token (CAMPAIGN_API_TOKENS)",
            "a read-only token (its digest in a file)",
        ],
        searched=[
            "the webserver's, daemon's and API server's logs",
            "every token= field of the request log (#N, sha256:8 digits, unknown or -)",
            "every file of DAGSTER_HOME",
            "every row of Dagster's and the campaign database",
        ],
        texts=searched,
    )
