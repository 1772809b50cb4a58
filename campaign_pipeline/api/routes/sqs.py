"""`GET /api/campaigns/sqs-status`: the `sqs-status --json` document (the spec's sqs-status)."""

from typing import Any

from fastapi import APIRouter, Response

from campaign_pipeline.api.dependencies import Reader, State
from campaign_pipeline.api.error_handlers import documented_errors
from campaign_pipeline.services.sqs_health import SqsStatus

router = APIRouter(prefix="/api/campaigns", tags=["sqs"])


@router.get(
    "/sqs-status",
    response_model=SqsStatus,
    responses={**documented_errors(401), 503: {"model": SqsStatus}},
)
def sqs_status(_token: Reader, state: State, response: Response) -> dict[str, Any]:
    """The queue's configuration (never credentials), whether it answers, its depth.

    503, with the same document, when the queue does not answer or is not configured.
    At most a second old: SQS is asked once a second, however many callers ask here.
    """
    status = state.recent_sqs_status.get()
    if not status.reachable:
        response.status_code = 503
    return status.as_dict()
