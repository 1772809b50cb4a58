"""The Dagster webserver's GraphQL API, as the trigger and the HTTP API use it.

`DagsterWebserver` launches `process_campaign_messages`, lists a campaign's runs by its
`campaign_id` tag, follows a run to its end and says why it failed, with optional headers for a
proxy in front of the webserver. Every problem is one line: `DagsterUnavailable` when the
webserver does not answer (or refuses to), `DagsterError` when it answers with an error.
`campaign_runs_in_instance` lists the same runs from a Dagster instance at hand (the command
line's `status`); both link a run to the UI with `run_page`.
"""

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import requests
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError
from gql.transport.exceptions import (
    TransportProtocolError,
    TransportQueryError,
    TransportServerError,
)
from gql.transport.requests import RequestsHTTPTransport

from campaign_pipeline.defs.tags import CAMPAIGN_ID_TAG, JOB_NAME
from campaign_pipeline.errors import DagsterError, DagsterUnavailable, SettingsError
from campaign_pipeline.services.status import RunSummary
from campaign_pipeline.text import one_line

DAGSTER_URL_VARIABLE = "DAGSTER_URL"
DEFAULT_DAGSTER_URL = "http://127.0.0.1:3000"
# Runs that may still claim or send: waiting in the queue, being launched, running, stopping.
IN_PROGRESS_STATUSES = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")
FINISHED_STATUSES = frozenset(
    {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
)
REQUEST_TIMEOUT_SECONDS = 30
# Runs of a campaign listed, newest first.
RUNS_SHOWN = 10

RUNS_IN_PROGRESS_QUERY = """
query CampaignRunsInProgress($filter: RunsFilter!) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId status } }
    ... on Error { message }
  }
}
"""

CAMPAIGN_RUNS_QUERY = """
query CampaignRuns($filter: RunsFilter!, $limit: Int) {
  runsOrError(filter: $filter, limit: $limit) {
    __typename
    ... on Runs { results { runId status startTime endTime } }
    ... on Error { message }
  }
}
"""

RUN_FAILURE_QUERY = """
query RunFailure($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      eventConnection {
        events {
          __typename
          ... on ExecutionStepFailureEvent {
            stepKey
            error { message }
            failureMetadata { description }
          }
          ... on RunFailureEvent { message }
          ... on RunCanceledEvent { message }
        }
      }
    }
    ... on Error { message }
  }
}
"""


@dataclass(frozen=True)
class RunOutcome:
    """How a followed run ended, and why when it did not succeed."""

    run_id: str
    status: dg.DagsterRunStatus
    reason: str | None = None


def parse_header(text: str) -> tuple[str, str]:
    """`"Name: value"` as `(name, value)`; raises `ValueError` for anything else."""
    name, separator, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not separator or not name or any(c.isspace() for c in name):
        raise ValueError(f"expected 'Name: value', not {text!r}")
    return name, value


def shown_url(url: str) -> str:
    """The Dagster URL as messages and links show it: a password in it (basic auth) as ***."""
    url = url.strip().rstrip("/")
    try:
        password = urlsplit(url).password
    except ValueError:  # not a URL at all; nothing to hide in it
        return url
    return url.replace(f":{password}@", ":***@", 1) if password else url


def run_page(dagster_url: str, run_id: str) -> str:
    """The run's page in the Dagster UI at `dagster_url`."""
    return f"{shown_url(dagster_url)}/runs/{run_id}"


def utc_from_timestamp(timestamp: float | None) -> datetime | None:
    """A run's start or end time (seconds since the epoch, or None) as a UTC datetime."""
    return datetime.fromtimestamp(timestamp, UTC) if timestamp else None


def campaign_runs_in_instance(
    instance: dg.DagsterInstance, campaign_id: str, dagster_url: str
) -> list[RunSummary]:
    """The campaign's latest runs (by its `campaign_id` tag) in `instance`, newest first."""
    records = instance.get_run_records(
        dg.RunsFilter(tags={CAMPAIGN_ID_TAG: campaign_id}), limit=RUNS_SHOWN
    )
    return [
        RunSummary(
            run_id=record.dagster_run.run_id,
            status=record.dagster_run.status.value,
            start_time=utc_from_timestamp(record.start_time),
            end_time=utc_from_timestamp(record.end_time),
            url=run_page(dagster_url, record.dagster_run.run_id),
        )
        for record in records
    ]


def _failure_reason(events: Iterable[Mapping[str, Any]]) -> str | None:
    """One line on why a run failed, from its events: the first failed step, else the run's."""
    fallback = None
    for event in events:
        kind = event.get("__typename")
        if kind == "ExecutionStepFailureEvent":
            description = (event.get("failureMetadata") or {}).get("description")
            error = (event.get("error") or {}).get("message")
            return f"step {event.get('stepKey')}: {one_line(description or error or '?')}"
        if kind in ("RunFailureEvent", "RunCanceledEvent") and fallback is None:
            fallback = one_line(event.get("message") or "") or None
    return fallback


class DagsterWebserver:
    """The GraphQL API of a Dagster webserver, with optional headers for a proxy in front of it.

    Launching and run status go through `DagsterGraphQLClient`; the two queries it has no method
    for (runs by tag, a run's failure) are posted with the same URL, headers and timeout.
    """

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str] | None = None,
        timeout: int = REQUEST_TIMEOUT_SECONDS,
    ) -> None:
        self.url = url.strip().rstrip("/")
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingsError(f"the Dagster URL {url!r} is not an http(s) URL")
        self.graphql_url = f"{self.url}/graphql"
        self.shown_url = shown_url(self.url)
        self._headers = dict(headers or {})
        self._timeout = timeout
        transport = RequestsHTTPTransport(
            url=self.graphql_url, headers=self._headers, timeout=timeout, use_json=True
        )
        self.client = DagsterGraphQLClient(
            parts.hostname,
            port_number=parts.port,
            transport=transport,
            use_https=parts.scheme == "https",
        )

    def run_url(self, run_id: str) -> str:
        """The run's page in the Dagster UI."""
        return run_page(self.url, run_id)

    def _unusable(self, error: BaseException) -> DagsterError:
        """A one-line error for a transport failure, found anywhere in `error`'s chain.

        `DagsterUnavailable` when the webserver did not answer or refused to; a plain
        `DagsterError` when it answered with an error of its own.
        """
        chain: list[BaseException] = []
        seen: BaseException | None = error
        while seen is not None and seen not in chain:
            chain.append(seen)
            seen = seen.__cause__ or seen.__context__
        for seen in chain:
            if isinstance(seen, requests.exceptions.Timeout):
                return DagsterUnavailable(
                    f"the Dagster webserver at {self.shown_url} did not answer "
                    f"within {self._timeout} s"
                )
            if isinstance(seen, requests.exceptions.ConnectionError):
                return DagsterUnavailable(
                    f"cannot reach the Dagster webserver at {self.shown_url}: is dagster-webserver "
                    f"running there? (set --dagster-url or {DAGSTER_URL_VARIABLE})"
                )
            if isinstance(seen, TransportServerError):
                hint = " (pass credentials with --header)" if seen.code in (401, 403) else ""
                return DagsterUnavailable(
                    f"the Dagster webserver at {self.shown_url} refused the request: "
                    f"HTTP {seen.code}{hint}"
                )
            if isinstance(seen, TransportProtocolError):
                return DagsterUnavailable(
                    f"{self.shown_url}/graphql did not answer as Dagster's GraphQL API "
                    "(is the URL right, and does a proxy in front of it want --header?)"
                )
            if isinstance(seen, TransportQueryError):
                detail = seen.errors[0].get("message") if seen.errors else seen
                return DagsterError(f"the Dagster webserver at {self.shown_url} answered: {detail}")
        return DagsterUnavailable(
            f"the Dagster webserver at {self.shown_url} failed: {one_line(error)}"
        )

    def _query(self, query: str, variables: Mapping[str, Any]) -> dict[str, Any]:
        try:
            response = requests.post(
                self.graphql_url,
                json={"query": query, "variables": dict(variables)},
                headers=self._headers,
                timeout=self._timeout,
            )
        except requests.exceptions.RequestException as error:
            raise self._unusable(error) from None
        if response.status_code >= 400:
            raise self._unusable(TransportServerError(response.reason, response.status_code))
        try:
            body = response.json()
        except ValueError:
            raise self._unusable(TransportProtocolError("not JSON")) from None
        if not isinstance(body, dict) or body.get("errors") or "data" not in body:
            errors = body.get("errors") if isinstance(body, dict) else None
            detail = one_line(errors[0].get("message", errors[0])) if errors else "no data"
            raise DagsterError(f"the Dagster webserver at {self.shown_url} answered: {detail}")
        return body["data"]

    def runs_in_progress(self, campaign_id: str) -> list[tuple[str, str]]:
        """`(run id, status)` of the campaign's runs that are queued, starting or running."""
        data = self._query(
            RUNS_IN_PROGRESS_QUERY,
            {
                "filter": {
                    "tags": [{"key": CAMPAIGN_ID_TAG, "value": campaign_id}],
                    "statuses": list(IN_PROGRESS_STATUSES),
                }
            },
        )["runsOrError"]
        if data["__typename"] != "Runs":
            raise DagsterError(f"Dagster could not list runs: {one_line(data.get('message'))}")
        return [(run["runId"], run["status"]) for run in data["results"]]

    def campaign_runs(self, campaign_id: str, limit: int = RUNS_SHOWN) -> list[RunSummary]:
        """The campaign's latest runs (by its `campaign_id` tag), newest first."""
        data = self._query(
            CAMPAIGN_RUNS_QUERY,
            {"filter": {"tags": [{"key": CAMPAIGN_ID_TAG, "value": campaign_id}]}, "limit": limit},
        )["runsOrError"]
        if data["__typename"] != "Runs":
            raise DagsterError(f"Dagster could not list runs: {one_line(data.get('message'))}")
        return [
            RunSummary(
                run_id=run["runId"],
                status=run["status"],
                start_time=utc_from_timestamp(run["startTime"]),
                end_time=utc_from_timestamp(run["endTime"]),
                url=self.run_url(run["runId"]),
            )
            for run in data["results"]
        ]

    def launch(self, run_config: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """Submit a run of the job; returns its id (the run waits in the instance's queue)."""
        try:
            return self.client.submit_job_execution(
                JOB_NAME, run_config=run_config, tags=dict(tags)
            )
        except DagsterGraphQLClientError as error:
            kind = str(error.args[0]) if error.args else ""
            if kind in ("JobNotFoundError", "PipelineNotFoundError"):
                raise DagsterUnavailable(
                    f"the Dagster webserver at {self.shown_url} has no job {JOB_NAME}; is the "
                    "campaign_pipeline code location loaded (see Deployment in the UI)?"
                ) from None
            if len(error.args) > 1 and kind and " " not in kind:
                detail = error.args[1]
                if isinstance(detail, list):  # config validation errors
                    detail = "; ".join(str(item.get("message", item)) for item in detail)
                raise DagsterError(f"Dagster refused the run: {kind}: {one_line(detail)}") from None
            raise self._unusable(error) from None

    def run_status(self, run_id: str) -> dg.DagsterRunStatus:
        """The run's current status."""
        try:
            return self.client.get_run_status(run_id)
        except DagsterGraphQLClientError as error:
            if error.args and error.args[0] in ("RunNotFoundError", "PipelineRunNotFoundError"):
                raise DagsterError(f"Dagster has no run {run_id}") from None
            raise self._unusable(error) from None

    def failure_reason(self, run_id: str) -> str | None:
        """One line on why the run failed or was canceled, if its events say."""
        data = self._query(RUN_FAILURE_QUERY, {"runId": run_id})["runOrError"]
        if data["__typename"] != "Run":
            return None
        return _failure_reason(data["eventConnection"]["events"])

    def wait(self, run_id: str, poll_seconds: float = 1.0) -> RunOutcome:
        """Poll the run until it has finished; returns how it ended."""
        while (status := self.run_status(run_id)) not in FINISHED_STATUSES:
            time.sleep(poll_seconds)
        reason = None if status == dg.DagsterRunStatus.SUCCESS else self.failure_reason(run_id)
        return RunOutcome(run_id, status, reason)
