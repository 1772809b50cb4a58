"""The spec's HTTP API, served in front of Dagster: process a campaign, check SQS, control one.

`create_app(settings)` builds the ASGI application. It keeps no state of its own: runs are
launched and listed through the Dagster webserver's GraphQL API (as `campaign-pipeline trigger`
does), campaigns are read and changed in the campaign store, the queue is asked directly, so any
number of servers can stand behind one load balancer.

Every answer is JSON, a document built in `campaign_pipeline.services`; every error is
`{"error": "<one line>"}` (`error_handlers`). Each request is logged as one line (method, path,
status, milliseconds, the token's name), never with its headers or query (`middleware`). The
routes are in `routes/`, one module per resource; what they share in `dependencies`.
"""

from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI

from campaign_pipeline.api.caches import RecentRuns, RecentSqsStatus
from campaign_pipeline.api.dependencies import ApiSettings, ApiState
from campaign_pipeline.api.error_handlers import install_error_handlers
from campaign_pipeline.api.middleware import BoundedRequests
from campaign_pipeline.api.routes import campaigns, control, health, preview, sqs, suppressions
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.services.dagster_client import DagsterWebserver

__all__ = ["ApiSettings", "create_app"]


def create_app(settings: ApiSettings) -> FastAPI:
    """The API application on `settings`."""
    webserver = DagsterWebserver(settings.dagster_url, timeout=settings.dagster_timeout_seconds)
    state = ApiState(
        settings=settings,
        store=CampaignStore(database_url=settings.database_url),
        webserver=webserver,
        recent_sqs_status=RecentSqsStatus(),
        recent_runs=RecentRuns(webserver),
        health_pool=ThreadPoolExecutor(len(health.CHECKS), thread_name_prefix="health"),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        state.close()

    app = FastAPI(
        title="campaign_pipeline",
        summary="The spec's campaign API, served in front of Dagster.",
        version="1.0.0",
        openapi_url="/api/openapi.json",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.api = state
    app.add_middleware(BoundedRequests, max_body_bytes=settings.max_body_bytes)
    install_error_handlers(app, settings.database_url)
    # sqs-status before the campaign routes: `{campaign_id}` would take its path.
    for routes in (health, sqs, campaigns, control, preview, suppressions):
        app.include_router(routes.router)
    return app
