"""What the routes depend on: the server's parts, made once by `create_app`, and the caller's token.

`State` gives a route the `ApiState` on `request.app.state`; `Reader` and `Operator` check the
Bearer token (401 without a known one, 403 for a read-only token on an operator's route) and
name it in the request's log line; `CampaignId` is the path's UUID.
"""

import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from campaign_pipeline.api.caches import RecentRuns, RecentSqsStatus
from campaign_pipeline.api.error_handlers import ApiError
from campaign_pipeline.api.middleware import MAX_BODY_BYTES
from campaign_pipeline.api.tokens import ApiToken, ApiTokens
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.services.dagster_client import DagsterWebserver

DAGSTER_TIMEOUT_SECONDS = 10
UNAUTHENTICATED = "authentication required: send Authorization: Bearer <token>"


@dataclass(frozen=True)
class ApiSettings:
    """What a server needs: its tokens, the campaign store, the Dagster webserver."""

    tokens: ApiTokens
    database_url: str
    dagster_url: str
    max_body_bytes: int = MAX_BODY_BYTES
    dagster_timeout_seconds: int = DAGSTER_TIMEOUT_SECONDS


@dataclass(frozen=True)
class ApiState:
    """The server's parts, shared by every request: no state of its own beyond a second's cache."""

    settings: ApiSettings
    store: CampaignStore
    webserver: DagsterWebserver
    recent_sqs_status: RecentSqsStatus
    recent_runs: RecentRuns
    health_pool: ThreadPoolExecutor

    def close(self) -> None:
        """Stop the health checks' threads and close the database's connections."""
        self.health_pool.shutdown(wait=False, cancel_futures=True)
        self.store.engine.dispose()


async def api_state(request: Request) -> ApiState:
    """The `ApiState` `create_app` left on the application."""
    state: ApiState = request.app.state.api
    return state


State = Annotated[ApiState, Depends(api_state)]

bearer = HTTPBearer(auto_error=False, description="a token from CAMPAIGN_API_TOKENS")


def reader(
    request: Request,
    state: State,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> ApiToken:
    """The caller's known token, any scope; 401 without one. Names it for the request's log."""
    token = state.settings.tokens.identify(credentials.credentials) if credentials else None
    if token is None:
        request.state.token = "none" if credentials is None else "unknown"
        raise ApiError(401, UNAUTHENTICATED, {"WWW-Authenticate": "Bearer"})
    request.state.token = token.label
    return token


def operator(token: Annotated[ApiToken, Depends(reader)]) -> ApiToken:
    """The caller's token, if it may operate; 403 for a read-only one."""
    if not token.may_operate:
        raise ApiError(403, f"token {token.label} may only read; this needs an operator token")
    return token


CampaignId = Annotated[uuid.UUID, Path(description="the campaign's UUID")]
Reader = Annotated[ApiToken, Depends(reader)]
Operator = Annotated[ApiToken, Depends(operator)]
