"""The spec's HTTP API, served in front of Dagster: process a campaign, check SQS, control one.

`create_app(settings)` builds the ASGI application. It keeps no state of its own: runs are
launched and listed through the Dagster webserver's GraphQL API (as `campaign-pipeline trigger`
does), campaigns are read and changed in the campaign store, the queue is asked directly, so any
number of servers can stand behind one load balancer.

Every answer is JSON; every error is `{"error": "<one line>"}`. Each request is logged as one
line (method, path, status, milliseconds, the token's name), never with its headers or query.
"""

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import requests
import sqlalchemy as sa
from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from campaign_pipeline.api import models
from campaign_pipeline.api.tokens import ApiToken, ApiTokens
from campaign_pipeline.errors import (
    CampaignControlError,
    CampaignDefinitionError,
    CampaignNotFound,
    CampaignNotProcessable,
    DagsterError,
    DagsterUnavailable,
    PreviewError,
)
from campaign_pipeline.lifecycle import Command
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.services.dagster_client import DagsterWebserver
from campaign_pipeline.services.preview import DEFAULT_SAMPLE_SIZE, preview_report
from campaign_pipeline.services.sqs_health import SqsStatus, sqs_status_from_environment
from campaign_pipeline.services.status import RunSummary, campaign_report
from campaign_pipeline.services.trigger import trigger_campaign
from campaign_pipeline.text import database_reason, display_database_url, one_line

logger = logging.getLogger("campaign_pipeline.api")

# Bodies here are a few flags; anything larger is refused before it is read further.
MAX_BODY_BYTES = 16 * 1024
MAX_PREVIEW_SAMPLE = 100
DAGSTER_TIMEOUT_SECONDS = 10
HEALTH_TIMEOUT_SECONDS = 3.0
# sqs-status and health ask SQS at most this often, however many callers poll them.
SQS_STATUS_MAX_AGE_SECONDS = 1.0
# A campaign's runs, likewise, for this many campaigns.
RUNS_MAX_AGE_SECONDS = 1.0
RUNS_REMEMBERED = 1_000
UNAUTHENTICATED = "authentication required: send Authorization: Bearer <token>"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class ApiSettings:
    """What a server needs: its tokens, the campaign store, the Dagster webserver."""

    tokens: ApiTokens
    database_url: str
    dagster_url: str
    max_body_bytes: int = MAX_BODY_BYTES
    dagster_timeout_seconds: int = DAGSTER_TIMEOUT_SECONDS


class ApiError(Exception):
    """An answer other than success: its HTTP status and one line for the caller."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=headers)


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI description of the error answers a route gives."""
    return {status: {"model": models.ErrorBody} for status in statuses}


class BoundedRequests:
    """ASGI middleware: refuse bodies over `max_body_bytes` (413) and log each request once.

    The body is read here, whole, before the application sees it: bodies are a few flags, and
    a client announcing or streaming more is answered at once, not buffered.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Bound the body, pass the request on, log the answer."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answered: list[int] = []

        async def send_logged(message: Message) -> None:
            if message["type"] == "http.response.start":
                answered.append(message["status"])
            await send(message)

        try:
            body_receive = await self._bounded(scope, receive)
            if body_receive is None:
                response = _error(413, f"the request body is over {self.max_body_bytes} bytes")
                await response(scope, receive, send_logged)
            else:
                await self.app(scope, body_receive, send_logged)
        finally:
            client = scope.get("client") or ("-", 0)
            logger.info(
                "%s %s %s %.1f ms token=%s client=%s",
                scope["method"],
                scope["path"],
                answered[0] if answered else "-",
                (time.perf_counter() - started) * 1000,
                scope.get("state", {}).get("token", "-"),
                client[0],
            )

    async def _bounded(self, scope: Scope, receive: Receive) -> Receive | None:
        """A `receive` that replays the body read here, or None when the body is too large."""
        if scope["method"] not in BODY_METHODS:
            return receive
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return receive
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return None
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        return replay


class RecentSqsStatus:
    """The queue's status, asked of SQS at most once per `max_age` seconds.

    A check builds its own short-lived boto3 client (100 ms and more of CPU here), and SQS
    bills and throttles GetQueueAttributes: fifty monitors polling at once cost one call a
    second. Callers arriving while a check runs wait for its answer.
    """

    def __init__(self, max_age: float = SQS_STATUS_MAX_AGE_SECONDS) -> None:
        self.max_age = max_age
        self._lock = threading.Lock()
        self._status: SqsStatus | None = None
        self._checked_at = 0.0

    def get(self) -> SqsStatus:
        """The latest status, checked again if it is older than `max_age`."""
        with self._lock:
            if self._status is None or time.monotonic() - self._checked_at > self.max_age:
                self._status = sqs_status_from_environment()
                self._checked_at = time.monotonic()
            return self._status


class RecentRuns:
    """Each campaign's runs, asked of Dagster at most once per `max_age` seconds.

    The webserver's GraphQL costs it tens of milliseconds of CPU a query; many callers polling
    one campaign cost one query a second. A run launched here is seen at once (`forget`).
    """

    def __init__(self, webserver: DagsterWebserver, max_age: float = RUNS_MAX_AGE_SECONDS) -> None:
        self.webserver = webserver
        self.max_age = max_age
        self._lock = threading.Lock()
        self._latest: OrderedDict[str, tuple[float, list[RunSummary], str | None]] = OrderedDict()
        self._fetching: dict[str, threading.Lock] = {}

    def get(self, campaign_id: str) -> tuple[list[RunSummary], str | None]:
        """The campaign's latest runs, and why they are missing when Dagster did not answer."""
        with self._lock:
            fetching = self._fetching.setdefault(campaign_id, threading.Lock())
        with fetching:
            with self._lock:
                latest = self._latest.get(campaign_id)
            if latest and time.monotonic() - latest[0] <= self.max_age:
                return latest[1], latest[2]
            try:
                runs, error = self.webserver.campaign_runs(campaign_id), None
            except DagsterError as problem:
                runs, error = [], str(problem)
            with self._lock:
                self._latest[campaign_id] = (time.monotonic(), runs, error)
                self._latest.move_to_end(campaign_id)
                while len(self._latest) > RUNS_REMEMBERED:
                    forgotten, _ = self._latest.popitem(last=False)
                    self._fetching.pop(forgotten, None)
            return runs, error

    def forget(self, campaign_id: str) -> None:
        """The next `get` asks Dagster (a run was just launched)."""
        with self._lock:
            self._latest.pop(campaign_id, None)


def _validation_message(error: RequestValidationError) -> str:
    """The first problem with the request, on one line."""
    first = error.errors()[0] if error.errors() else {}
    where = [str(part) for part in first.get("loc", ())]
    if where[:2] == ["path", "campaign_id"]:
        shown = str(first.get("input"))
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        return f"campaign id {shown!r} is not a UUID"
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON"
    place = " ".join(where) if where else "request"
    return f"{place}: {first.get('msg', 'invalid')}"


def _install_error_handlers(app: FastAPI, settings: ApiSettings) -> None:
    """Every failure becomes `{"error": ...}` with the status that says what kind it is."""
    shown_database = display_database_url(settings.database_url)
    # The most specific class found in an error's MRO decides.
    statuses: list[tuple[type[Exception], int]] = [
        (CampaignNotFound, 404),
        # Paused, cancelled, scheduled for later, a status no run takes, a run in progress.
        (CampaignNotProcessable, 409),
        # Refused by the campaign's status (`CampaignControlRefused`), or it kept changing.
        (CampaignControlError, 409),
        # A preview of a campaign no recipient of which could ever be sent.
        (CampaignDefinitionError, 409),
        # SQS is configured, but the queue's maximum message size cannot be read.
        (PreviewError, 503),
        (DagsterUnavailable, 503),
        # Dagster answered, but with an error of its own (a refused run config, say).
        (DagsterError, 502),
    ]

    def by_status(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
        async def handle(_request: Request, error: Exception) -> JSONResponse:
            return _error(status, str(error))

        return handle

    for kind, status in statuses:
        app.add_exception_handler(kind, by_status(status))

    async def api_error(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, ApiError)
        return _error(error.status, error.message, error.headers)

    async def invalid_request(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        return _error(422, _validation_message(error))

    async def http_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        messages = {
            400: "the request body cannot be read as JSON",
            404: f"{request.url.path} is not an endpoint of this API",
            405: f"{request.method} is not allowed on {request.url.path}",
        }
        message = messages.get(error.status_code, str(error.detail))
        return _error(error.status_code, message, getattr(error, "headers", None))

    async def database_error(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, sa.exc.SQLAlchemyError)
        message = f"the campaign database {shown_database} failed: {database_reason(error)}"
        logger.warning("%s", message)
        return _error(503, message)

    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.error(
            "%s %s failed: %s: %s",
            request.method,
            request.url.path,
            type(error).__name__,
            one_line(error),
        )
        return _error(500, "internal error; the server's log has the details")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(sa.exc.SQLAlchemyError, database_error)
    app.add_exception_handler(Exception, unexpected)


def _health_checks(
    store: CampaignStore, webserver: DagsterWebserver, sqs_status: RecentSqsStatus
) -> dict[str, Callable[[], str | None]]:
    """Each dependency's check: None when it answers, else why not (for the log only)."""

    def campaign_store() -> str | None:
        try:
            with store.engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError as error:
            return database_reason(error)
        return None

    def sqs() -> str | None:
        return sqs_status.get().error

    def dagster() -> str | None:
        try:
            response = requests.get(f"{webserver.url}/server_info", timeout=HEALTH_TIMEOUT_SECONDS)
        except requests.RequestException as error:
            return f"{webserver.shown_url}: {type(error).__name__}"
        return None if response.ok else f"{webserver.shown_url}: HTTP {response.status_code}"

    return {"campaign_store": campaign_store, "sqs": sqs, "dagster": dagster}


def create_app(settings: ApiSettings) -> FastAPI:
    """The API application on `settings`."""
    store = CampaignStore(database_url=settings.database_url)
    webserver = DagsterWebserver(settings.dagster_url, timeout=settings.dagster_timeout_seconds)
    recent_sqs_status = RecentSqsStatus()
    recent_runs = RecentRuns(webserver)
    checks = _health_checks(store, webserver, recent_sqs_status)
    health_pool = ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="health")

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # noqa: ANN202 - FastAPI's lifespan protocol
        yield
        health_pool.shutdown(wait=False, cancel_futures=True)
        store.engine.dispose()

    app = FastAPI(
        title="campaign_pipeline",
        summary="The spec's campaign API, served in front of Dagster.",
        version="1.0.0",
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.add_middleware(BoundedRequests, max_body_bytes=settings.max_body_bytes)
    _install_error_handlers(app, settings)
    bearer = HTTPBearer(auto_error=False, description="a token from CAMPAIGN_API_TOKENS")

    def reader(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> ApiToken:
        token = settings.tokens.identify(credentials.credentials) if credentials else None
        if token is None:
            request.state.token = "none" if credentials is None else "unknown"
            raise ApiError(401, UNAUTHENTICATED, {"WWW-Authenticate": "Bearer"})
        request.state.token = token.label
        return token

    def operator(token: Annotated[ApiToken, Depends(reader)]) -> ApiToken:
        if not token.may_operate:
            raise ApiError(403, f"token {token.label} may only read; this needs an operator token")
        return token

    CampaignId = Annotated[uuid.UUID, Path(description="the campaign's UUID")]
    Reader = Annotated[ApiToken, Depends(reader)]
    Operator = Annotated[ApiToken, Depends(operator)]

    def known(campaign_id: uuid.UUID) -> str:
        """The id in canonical form, once the campaign is known to exist."""
        canonical = str(campaign_id)
        if store.campaign_status(canonical) is None:
            raise ApiError(404, f"campaign {canonical} does not exist")
        return canonical

    def actor(request: Request, token: ApiToken) -> str:
        client = request.client.host if request.client else "unknown"
        return f"api token {token.label} from {client}"

    @app.get("/api/health", response_model=models.Health, tags=["health"])
    def health() -> models.Health:
        """Whether the server runs (always 200) and whether its dependencies answer.

        No token needed; reasons are in the server's log, not here.
        """
        futures = {name: health_pool.submit(check) for name, check in checks.items()}
        answers: dict[str, bool] = {}
        for name, future in futures.items():
            try:
                reason = future.result(timeout=HEALTH_TIMEOUT_SECONDS + 2)
            except FutureTimeout:
                reason = "no answer in time"
            if reason:
                logger.warning("health: %s: %s", name, reason)
            answers[name] = reason is None
        return models.Health(status="ok" if all(answers.values()) else "degraded", **answers)

    @app.get(
        "/api/campaigns/sqs-status",
        response_model=SqsStatus,
        responses={**_errors(401), 503: {"model": SqsStatus}},
        tags=["sqs"],
    )
    def sqs_status(_token: Reader, response: Response) -> dict[str, Any]:
        """The queue's configuration (never credentials), whether it answers, its depth.

        503, with the same document, when the queue does not answer or is not configured.
        At most a second old: SQS is asked once a second, however many callers ask here.
        """
        status = recent_sqs_status.get()
        if not status.reachable:
            response.status_code = 503
        return status.as_dict()

    @app.get(
        "/api/campaigns/{campaign_id}",
        response_model=models.CampaignStatus,
        responses=_errors(401, 404, 422, 503),
        tags=["campaigns"],
    )
    def campaign_status(campaign_id: CampaignId, _token: Reader) -> dict[str, Any]:
        """The campaign's status, counts, progress and runs, as `status --json` prints them.

        The runs are at most a second old; when Dagster does not answer, `runs` is empty and
        `runs_error` says why.
        """
        canonical = known(campaign_id)
        runs, runs_error = recent_runs.get(canonical)
        return campaign_report(store, canonical, runs, runs_error)

    @app.post(
        "/api/campaigns/{campaign_id}/process-messages",
        status_code=202,
        response_model=models.ProcessAccepted,
        responses=_errors(400, 401, 403, 404, 409, 413, 422, 502, 503),
        tags=["campaigns"],
    )
    def process_messages(
        campaign_id: CampaignId,
        _token: Operator,
        body: models.ProcessRequest | None = None,
    ) -> models.ProcessAccepted:
        """Launch a run that processes the campaign, as `campaign-pipeline trigger` does.

        409 when its status, its schedule or a run in progress keeps it from being processed.
        """
        canonical = str(campaign_id)
        send_now = bool(body and body.now)
        campaign, run_id = trigger_campaign(store, webserver, canonical, send_now)
        recent_runs.forget(canonical)
        try:
            status: str | None = webserver.run_status(run_id).value
        except DagsterError:
            status = None  # launched all the same; the run's page tells
        return models.ProcessAccepted(
            runId=run_id,
            status=status,
            url=webserver.run_url(run_id),
            campaignId=canonical,
            action="resume" if campaign.status == "ready_to_launch" else "process",
        )

    def control(
        campaign_id: uuid.UUID,
        command: Command,
        request: Request,
        token: ApiToken,
        accept_invalid: bool = False,
    ) -> dict[str, Any]:
        result = store.control(str(campaign_id), command, actor(request, token), accept_invalid)
        return {
            "campaign_id": result.campaign_id,
            "command": result.command,
            "before": result.before,
            "after": result.after,
            "changed": result.changed,
            "message": result.message,
        }

    control_errors = _errors(400, 401, 403, 404, 409, 413, 422, 503)

    @app.post(
        "/api/campaigns/{campaign_id}/pause",
        response_model=models.ControlAnswer,
        responses=control_errors,
        tags=["control"],
    )
    def pause(campaign_id: CampaignId, request: Request, token: Operator) -> dict[str, Any]:
        """Pause the campaign: a run sending for it stops within seconds, the rest pending."""
        return control(campaign_id, "pause", request, token)

    @app.post(
        "/api/campaigns/{campaign_id}/resume",
        response_model=models.ControlAnswer,
        responses=control_errors,
        tags=["control"],
    )
    def resume(
        campaign_id: CampaignId,
        request: Request,
        token: Operator,
        body: models.ResumeRequest | None = None,
    ) -> dict[str, Any]:
        """Resume a paused campaign: the processing sensor starts a run for the rest."""
        accept_invalid = bool(body and body.accept_invalid)
        return control(campaign_id, "resume", request, token, accept_invalid)

    @app.post(
        "/api/campaigns/{campaign_id}/cancel",
        response_model=models.ControlAnswer,
        responses=control_errors,
        tags=["control"],
    )
    def cancel(campaign_id: CampaignId, request: Request, token: Operator) -> dict[str, Any]:
        """Cancel the campaign for good: its pending recipients are never sent."""
        return control(campaign_id, "cancel", request, token)

    @app.get(
        "/api/campaigns/{campaign_id}/preview",
        response_model=models.Preview,
        responses=_errors(401, 404, 409, 422, 503),
        tags=["campaigns"],
    )
    def preview(
        campaign_id: CampaignId,
        _token: Reader,
        limit: Annotated[int, Query(ge=0, le=MAX_PREVIEW_SAMPLE)] = DEFAULT_SAMPLE_SIZE,
    ) -> dict[str, Any]:
        """What a run would make of the pending recipients, as `preview --json` prints it.

        Changes and sends nothing. 409 for a cancelled campaign or one that cannot be sent.
        """
        _, report = preview_report(store, str(campaign_id), limit)
        return report.as_dict()

    return app
