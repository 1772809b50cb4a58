"""Start `process_campaign_messages` for one campaign through the Dagster webserver's GraphQL API.

This is the spec's `POST /api/campaigns/:campaignId/process-messages`: the campaign is checked in
the campaign store, Dagster is asked whether a run for it is already in progress, and the run is
launched with the run config and tags the sensor gives it, so the instance's run queue (one run
per `campaign_id` tag) and the campaign's lease treat it like any other run.
"""

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
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

from campaign_pipeline.campaign_status import RUNS_SHOWN, RunSummary, utc_from_timestamp
from campaign_pipeline.clock import utcnow
from campaign_pipeline.defs.tags import CAMPAIGN_ID_TAG, JOB_NAME, campaign_tags
from campaign_pipeline.errors import (
    CampaignNotFound,
    CampaignNotProcessable,
    DagsterError,
    DagsterUnavailable,
    InvalidCampaignId,
    SettingsError,
)
from campaign_pipeline.jobs import campaign_run_config
from campaign_pipeline.lifecycle import refusal
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.settings import campaign_send_processes
from campaign_pipeline.text import canonical_campaign_id, one_line

DAGSTER_URL_VARIABLE = "DAGSTER_URL"
DEFAULT_DAGSTER_URL = "http://127.0.0.1:3000"
# Runs that may still claim or send: waiting in the queue, being launched, running, stopping.
IN_PROGRESS_STATUSES = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")
FINISHED_STATUSES = frozenset(
    {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
)
REQUEST_TIMEOUT_SECONDS = 30

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
class TriggerableCampaign:
    """A campaign the pipeline may process now, as the store has it."""

    id: str
    organization_id: str | None
    status: str
    pending: int
    name: str = ""


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


def campaign_id_or_error(raw: str) -> str:
    """The campaign id in canonical UUID form; raises `InvalidCampaignId` if it is not a UUID."""
    try:
        return canonical_campaign_id(raw)
    except ValueError as error:
        raise InvalidCampaignId(str(error)) from None


def check_processable(
    store: CampaignStore, campaign_id: str, send_now: bool = False
) -> TriggerableCampaign:
    """The campaign, if `CampaignStore.claim` would take it; else why not, as the claim says it.

    `lifecycle.refusal` decides: `asset_generated` is claimed (once its `send_at` has come, or
    with `send_now`); `ready_to_launch` is resumed, which is only worth a run while recipients
    are still pending; `paused` and `cancelled` campaigns are refused. Whether another run
    holds the campaign is asked of Dagster (`DagsterWebserver.runs_in_progress`); the claim
    itself still checks the lease.

    Raises:
        CampaignNotFound: no campaign has that id.
        CampaignNotProcessable: its status or schedule keeps a run from taking it now.
    """
    campaign = store.get_campaign(campaign_id)
    if campaign is None:
        raise CampaignNotFound(f"campaign {campaign_id} does not exist")
    now = utcnow()
    # Counting reads the campaign's whole audience: only once its status does not refuse it.
    if refused := refusal(campaign, now=now, send_now=send_now):
        raise refused
    pending = store.count_recipients(campaign_id)["pending"]
    if refused := refusal(campaign, now=now, send_now=send_now, pending=pending):
        raise refused
    return TriggerableCampaign(
        campaign_id, campaign["organization_id"], campaign["status"], pending, campaign["name"]
    )


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
        # Shown in messages and links: a password in the URL (basic auth) becomes ***.
        self.shown_url = (
            self.url.replace(f":{parts.password}@", ":***@", 1) if parts.password else self.url
        )
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
        return f"{self.shown_url}/runs/{run_id}"

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


def trigger_campaign(
    store: CampaignStore, webserver: DagsterWebserver, campaign_id: str, send_now: bool = False
) -> tuple[TriggerableCampaign, str]:
    """Check the campaign and its runs, then launch a run for it; returns the campaign and run id.

    Checking and launching are two requests, so two triggers at the same moment can both
    launch; the run queue's limit of one run per `campaign_id` and the campaign's lease still
    let only one of them send.
    """
    campaign = check_processable(store, campaign_id, send_now)
    in_progress = webserver.runs_in_progress(campaign_id)
    if in_progress:
        run_id, status = in_progress[0]
        raise CampaignNotProcessable(
            f"campaign {campaign_id} already has a run in progress: {run_id} ({status}), "
            f"{webserver.run_url(run_id)}"
        )
    config_fields: dict[str, Any] = {"send_now": True} if send_now else {}
    # Dagster's GraphQL adds partitions only for assets; the run's claim files the run under
    # the campaign's partition instead.
    run_id = webserver.launch(
        campaign_run_config(campaign_id, campaign_send_processes(), **config_fields),
        campaign_tags(campaign_id, campaign.organization_id, campaign.name),
    )
    return campaign, run_id


def trigger(
    store: CampaignStore,
    webserver: DagsterWebserver,
    raw_campaign_id: str,
    *,
    wait: bool,
    send_now: bool = False,
    out: Callable[[str], None],
    err: Callable[[str], None],
    poll_seconds: float = 1.0,
) -> int:
    """The `trigger` command: launch, print the run and its link, optionally follow it.

    Returns the exit status: 0 when launched (or, with `wait`, succeeded), 1 when the followed
    run failed or was canceled. Problems a person can fix raise a `CampaignPipelineError`
    (an invalid id, a campaign no run may take now, a webserver that cannot be used).
    """
    campaign_id = campaign_id_or_error(raw_campaign_id)
    campaign, run_id = trigger_campaign(store, webserver, campaign_id, send_now)
    action = "resume" if campaign.status == "ready_to_launch" else "process"
    out(f"launched run {run_id} to {action} campaign {campaign_id}: {webserver.run_url(run_id)}")
    if not wait:
        return 0
    outcome = webserver.wait(run_id, poll_seconds)
    if outcome.status != dg.DagsterRunStatus.SUCCESS:
        verb = "was canceled" if outcome.status == dg.DagsterRunStatus.CANCELED else "failed"
        err(f"run {run_id} {verb}: {outcome.reason or 'see ' + webserver.run_url(run_id)}")
        return 1
    counts = store.count_recipients(campaign_id)
    out(
        f"run {run_id} succeeded; the campaign {campaign_id}: {counts['ready_to_send']} queued, "
        f"{counts['failed']} failed, {counts['pending']} pending"
    )
    return 0
