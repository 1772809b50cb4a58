"""`GET /api/campaigns/{id}/preview`: the `preview --json` document; nothing changed or sent."""

from typing import Annotated, Any

from fastapi import APIRouter, Query

from campaign_pipeline.api import models
from campaign_pipeline.api.dependencies import CampaignId, Reader, State
from campaign_pipeline.api.error_handlers import documented_errors
from campaign_pipeline.services.preview import DEFAULT_SAMPLE_SIZE, preview_report

MAX_PREVIEW_SAMPLE = 100

router = APIRouter(prefix="/api/campaigns", tags=["campaigns"])


@router.get(
    "/{campaign_id}/preview",
    response_model=models.Preview,
    responses=documented_errors(401, 404, 409, 422, 503),
)
def preview(
    campaign_id: CampaignId,
    _token: Reader,
    state: State,
    limit: Annotated[int, Query(ge=0, le=MAX_PREVIEW_SAMPLE)] = DEFAULT_SAMPLE_SIZE,
) -> dict[str, Any]:
    """What a run would make of the pending recipients, as `preview --json` prints it.

    Changes and sends nothing. 409 for a cancelled campaign or one that cannot be sent.
    """
    _, report = preview_report(state.store, str(campaign_id), limit)
    return report.as_dict()
