"""`services.trigger` and `services.dagster_client` against small HTTP servers on loopback standing
in for the webserver (or a proxy in front of it): launches, headers, a run in progress, and how
the GraphQL client reports webservers it cannot use.

Touches SQLite campaign stores; the real webserver is in `tests/e2e/test_trigger.py`, the
checks without a server in `tests/unit/test_trigger.py`.
"""

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import dagster as dg
import pytest

from campaign_pipeline.defs.tags import JOB_NAME
from campaign_pipeline.errors import (
    CampaignNotProcessable,
    DagsterUnavailable,
)
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.services.dagster_client import (
    DagsterWebserver,
    run_page,
)
from campaign_pipeline.services.trigger import trigger
from tests.conftest import free_port

ORGANIZATION_ID = "123e4567-e89b-12d3-a456-426614174000"
Answer = Callable[[dict[str, Any], dict[str, str]], tuple[int, str, bytes]]


def add_campaign(store: CampaignStore, status: str = "asset_generated", pending: int = 2) -> str:
    campaign_id = store.campaigns.add(
        organization_id=ORGANIZATION_ID,
        name="t",
        status=status,
        message_type="text",
        message_content="Hi {{name}}",
    )
    store.campaigns.add_recipients(
        campaign_id, [{"phone_number": f"+1555000{i:04d}"} for i in range(pending)]
    )
    return campaign_id


@pytest.fixture
def http_server() -> Iterator[Callable[[Answer], str]]:
    """Start loopback HTTP servers answering POSTs with `answer(body, headers)`; returns URLs."""
    servers: list[ThreadingHTTPServer] = []
    threads: list[threading.Thread] = []

    def start(answer: Answer) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                status, content_type, payload = answer(body, dict(self.headers))
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        servers.append(server)
        threads.append(thread)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
    for thread in threads:
        thread.join(timeout=5)


def graphql_answer(data: dict[str, Any]) -> tuple[int, str, bytes]:
    return 200, "application/json", json.dumps({"data": data}).encode()


def fake_dagster(seen_headers: list[dict[str, str]], runs: list[dict[str, str]]) -> Answer:
    """Answers the four requests `trigger` sends, the way Dagster's GraphQL API does."""

    def answer(body: dict[str, Any], headers: dict[str, str]) -> tuple[int, str, bytes]:
        seen_headers.append(headers)
        query = body["query"]
        if "runsOrError" in query:
            return graphql_answer({"runsOrError": {"__typename": "Runs", "results": runs}})
        if "repositoriesOrError" in query:
            node = {
                "name": "__repository__",
                "location": {"name": "campaign_pipeline"},
                "pipelines": [{"name": JOB_NAME}],
            }
            return graphql_answer(
                {"repositoriesOrError": {"__typename": "RepositoryConnection", "nodes": [node]}}
            )
        if "launchPipelineExecution" in query:
            run = {"runId": "run-1"}
            launched = {"__typename": "LaunchRunSuccess", "run": run}
            return graphql_answer({"launchPipelineExecution": launched})
        return 400, "application/json", b'{"errors": [{"message": "unexpected"}]}'

    return answer


def test_trigger_launches_with_the_sensors_config_and_passes_headers(
    sqlite_store: CampaignStore, http_server: Callable[[Answer], str]
) -> None:
    """The run config and tags are the sensor's; every request carries the given headers."""
    campaign_id = add_campaign(sqlite_store)
    seen: list[dict[str, str]] = []
    launches: list[dict[str, Any]] = []
    answer = fake_dagster(seen, [])

    def recording(body: dict[str, Any], headers: dict[str, str]) -> tuple[int, str, bytes]:
        if "launchPipelineExecution" in body["query"]:
            launches.append(body["variables"]["executionParams"])
        return answer(body, headers)

    url = http_server(recording)
    webserver = DagsterWebserver(url + "/", {"Authorization": "Bearer t0ken"})
    lines: list[str] = []

    status = trigger(sqlite_store, webserver, campaign_id, wait=False, out=lines.append, err=print)

    assert status == 0
    assert lines == [f"launched run run-1 to process campaign {campaign_id}: {url}/runs/run-1"]
    assert len(seen) == 3
    assert all(headers.get("Authorization") == "Bearer t0ken" for headers in seen)
    (params,) = launches
    assert params["runConfigData"] == {
        "ops": {"claim_campaign": {"config": {"campaign_id": campaign_id}}},
        "execution": {"config": {"in_process": {}}},
    }
    assert params["executionMetadata"]["tags"] == [
        {"key": "campaign_id", "value": campaign_id},
        {"key": "organization_id", "value": ORGANIZATION_ID},
        {"key": "campaign_name", "value": sqlite_store.campaigns.get(campaign_id)["name"]},
    ]


def test_trigger_refuses_a_campaign_with_a_run_in_progress(
    sqlite_store: CampaignStore, http_server: Callable[[Answer], str]
) -> None:
    """A run Dagster lists for the campaign's tag stops the trigger, naming that run."""
    campaign_id = add_campaign(sqlite_store)
    url = http_server(fake_dagster([], [{"runId": "busy-1", "status": "STARTED"}]))

    with pytest.raises(CampaignNotProcessable) as raised:
        trigger(sqlite_store, DagsterWebserver(url), campaign_id, wait=False, out=print, err=print)

    assert str(raised.value) == (
        f"campaign {campaign_id} already has a run in progress: busy-1 (STARTED), {url}/runs/busy-1"
    )


@pytest.mark.parametrize(
    ("status", "content_type", "body", "expected"),
    [
        (
            401,
            "text/plain",
            b"no",
            "refused the request: HTTP 401 (pass credentials with --header)",
        ),
        (502, "text/html", b"<html>", "refused the request: HTTP 502"),
        (200, "text/html", b"<html>sign in</html>", "did not answer as Dagster's GraphQL API"),
    ],
)
def test_webserver_errors_are_one_line(
    http_server: Callable[[Answer], str],
    status: int,
    content_type: str,
    body: bytes,
    expected: str,
) -> None:
    """A proxy's refusal or a page that is not GraphQL is reported for what it is."""
    url = http_server(lambda _body, _headers: (status, content_type, body))
    webserver = DagsterWebserver(url)

    for call in (lambda: webserver.runs_in_progress("c"), lambda: webserver.launch({}, {})):
        with pytest.raises(
            DagsterUnavailable, match=expected.replace("(", r"\(").replace(")", r"\)")
        ):
            call()


def test_an_unreachable_webserver_is_named() -> None:
    """Nothing listening at the URL: both client paths say so, with the URL."""
    url = f"http://127.0.0.1:{free_port()}"
    webserver = DagsterWebserver(url)

    for call in (
        lambda: webserver.runs_in_progress("c"),
        lambda: webserver.launch({}, {}),
        lambda: webserver.run_status("r"),
    ):
        with pytest.raises(
            DagsterUnavailable, match=f"cannot reach the Dagster webserver at {url}"
        ):
            call()


def test_wait_returns_the_failure_reason(http_server: Callable[[Answer], str]) -> None:
    """Polling stops at a finished status and fetches why the run failed."""
    statuses = iter(["QUEUED", "STARTED", "FAILURE"])

    def answer(body: dict[str, Any], _headers: dict[str, str]) -> tuple[int, str, bytes]:
        if "pipelineRunOrError" in body["query"]:
            run = {"__typename": "Run", "status": next(statuses)}
            return graphql_answer({"pipelineRunOrError": run})
        events = [{"__typename": "RunFailureEvent", "message": "worker was killed"}]
        run = {"__typename": "Run", "eventConnection": {"events": events}}
        return graphql_answer({"runOrError": run})

    outcome = DagsterWebserver(http_server(answer)).wait("r", poll_seconds=0.01)

    assert outcome.status == dg.DagsterRunStatus.FAILURE
    assert outcome.reason == "worker was killed"


def test_a_password_in_the_url_is_not_shown() -> None:
    """Basic-auth credentials in the URL stay out of messages and links."""
    url = f"http://ops:hunter2@127.0.0.1:{free_port()}"
    webserver = DagsterWebserver(url)

    with pytest.raises(DagsterUnavailable) as raised:
        webserver.runs_in_progress("c")

    assert "hunter2" not in str(raised.value) + webserver.run_url("r")
    assert "ops:***@127.0.0.1" in str(raised.value)
    # The command line's `status` links runs it reads from the instance the same way.
    assert run_page(url + "/", "r") == webserver.run_url("r") == f"{webserver.shown_url}/runs/r"
