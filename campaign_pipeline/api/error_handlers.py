"""Every failure as `{"error": "<one line>"}`, with the HTTP status that says what kind it is.

The pipeline's own errors (`campaign_pipeline.errors`) map to a status by class; `ApiError`
carries its status itself; a request FastAPI cannot validate is 422, a database that fails 503,
anything unexpected 500 with the details in the server's log only.
"""

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from campaign_pipeline.api import models
from campaign_pipeline.errors import (
    CampaignControlError,
    CampaignDefinitionError,
    CampaignNotFound,
    CampaignNotProcessable,
    DagsterError,
    DagsterUnavailable,
    InvalidSuppression,
    PreviewError,
)
from campaign_pipeline.text import database_reason, display_database_url, one_line

logger = logging.getLogger("campaign_pipeline.api")

# The most specific class found in an error's MRO decides.
STATUSES: tuple[tuple[type[Exception], int], ...] = (
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
    # An organization id, number or scope to suppress that cannot be used.
    (InvalidSuppression, 422),
)


class ApiError(Exception):
    """An answer other than success: its HTTP status and one line for the caller."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """`{"error": message}` on one line, with `status`."""
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=headers)


def documented_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI description of the error answers a route gives."""
    return {status: {"model": models.ErrorBody} for status in statuses}


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


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of the application answers on the request's path."""
    methods: set[str] = set()
    for route in request.app.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def install_error_handlers(app: FastAPI, database_url: str) -> None:
    """Every failure becomes `{"error": ...}` with the status that says what kind it is."""
    shown_database = display_database_url(database_url)

    def by_status(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
        async def handle(_request: Request, error: Exception) -> JSONResponse:
            return error_response(status, str(error))

        return handle

    for kind, status in STATUSES:
        app.add_exception_handler(kind, by_status(status))

    async def api_error(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, ApiError)
        return error_response(error.status, error.message, error.headers)

    async def invalid_request(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        return error_response(422, _validation_message(error))

    async def http_error(request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, StarletteHTTPException)
        messages = {
            400: "the request body cannot be read as JSON",
            404: f"{request.url.path} is not an endpoint of this API",
            405: f"{request.method} is not allowed on {request.url.path}",
        }
        message = messages.get(error.status_code, str(error.detail))
        headers = getattr(error, "headers", None)
        if error.status_code == 405:
            # Starlette names only the first route's methods; the path may have several.
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return error_response(error.status_code, message, headers)

    async def database_error(_request: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, sa.exc.SQLAlchemyError)
        message = f"the campaign database {shown_database} failed: {database_reason(error)}"
        logger.warning("%s", message)
        return error_response(503, message)

    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.error(
            "%s %s failed: %s: %s",
            request.method,
            request.url.path,
            type(error).__name__,
            one_line(error),
        )
        return error_response(500, "internal error; the server's log has the details")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(sa.exc.SQLAlchemyError, database_error)
    app.add_exception_handler(Exception, unexpected)
