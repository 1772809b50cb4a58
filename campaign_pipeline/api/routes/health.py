"""`GET /api/health`: whether the server runs and whether the store, SQS and Dagster answer."""

import logging
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout

import requests
import sqlalchemy as sa
from fastapi import APIRouter

from campaign_pipeline.api import models
from campaign_pipeline.api.dependencies import ApiState, State
from campaign_pipeline.text import database_reason

logger = logging.getLogger("campaign_pipeline.api")

HEALTH_TIMEOUT_SECONDS = 3.0

router = APIRouter(prefix="/api", tags=["health"])


def _campaign_store(state: ApiState) -> str | None:
    try:
        with state.store.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as error:
        return database_reason(error)
    return None


def _sqs(state: ApiState) -> str | None:
    return state.recent_sqs_status.get().error


def _dagster(state: ApiState) -> str | None:
    webserver = state.webserver
    try:
        response = requests.get(f"{webserver.url}/server_info", timeout=HEALTH_TIMEOUT_SECONDS)
    except requests.RequestException as error:
        return f"{webserver.shown_url}: {type(error).__name__}"
    return None if response.ok else f"{webserver.shown_url}: HTTP {response.status_code}"


# Each dependency's check: None when it answers, else why not (for the log only).
CHECKS: dict[str, Callable[[ApiState], str | None]] = {
    "campaign_store": _campaign_store,
    "sqs": _sqs,
    "dagster": _dagster,
}


@router.get("/health", response_model=models.Health)
def health(state: State) -> models.Health:
    """Whether the server runs (always 200) and whether its dependencies answer.

    No token needed; reasons are in the server's log, not here.
    """
    futures = {name: state.health_pool.submit(check, state) for name, check in CHECKS.items()}
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
