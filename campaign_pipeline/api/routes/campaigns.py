"""A campaign: its status, and the spec's process-messages.

`GET /api/campaigns/{id}` answers with the `status --json` document; `POST
/api/campaigns/{id}/process-messages` launches a run as `campaign-pipeline trigger` does.
"""

from typing import Any

from fastapi import APIRouter

from campaign_pipeline.api import models
from campaign_pipeline.api.dependencies import CampaignId, Operator, Reader, State
from campaign_pipeline.api.error_handlers import documented_errors
from campaign_pipeline.errors import CampaignNotFound, DagsterError
from campaign_pipeline.services.status import campaign_report
from campaign_pipeline.services.trigger import trigger_campaign

router = APIRouter(prefix="/api/campaigns", tags=["campaigns"])


@router.get(
    "/{campaign_id}",
    response_model=models.CampaignStatus,
    responses=documented_errors(401, 404, 422, 503),
)
def campaign_status(campaign_id: CampaignId, _token: Reader, state: State) -> dict[str, Any]:
    """The campaign's status, counts, progress and runs, as `status --json` prints them.

    The runs are at most a second old; when Dagster does not answer, `runs` is empty and
    `runs_error` says why.
    """
    canonical = str(campaign_id)
    # Dagster is asked about campaigns that exist only.
    if state.store.claims.status(canonical) is None:
        raise CampaignNotFound(f"campaign {canonical} does not exist")
    runs, runs_error = state.recent_runs.get(canonical)
    return campaign_report(state.store, canonical, runs, runs_error)


@router.post(
    "/{campaign_id}/process-messages",
    status_code=202,
    response_model=models.ProcessAccepted,
    responses=documented_errors(400, 401, 403, 404, 409, 413, 422, 502, 503),
)
def process_messages(
    campaign_id: CampaignId,
    _token: Operator,
    state: State,
    body: models.ProcessRequest | None = None,
) -> models.ProcessAccepted:
    """Launch a run that processes the campaign, as `campaign-pipeline trigger` does.

    409 when its status, its schedule or a run in progress keeps it from being processed.
    """
    canonical = str(campaign_id)
    send_now = bool(body and body.now)
    campaign, run_id = trigger_campaign(state.store, state.webserver, canonical, send_now)
    state.recent_runs.forget(canonical)
    try:
        status: str | None = state.webserver.run_status(run_id).value
    except DagsterError:
        status = None  # launched all the same; the run's page tells
    return models.ProcessAccepted(
        runId=run_id,
        status=status,
        url=state.webserver.run_url(run_id),
        campaignId=canonical,
        action="resume" if campaign.status == "ready_to_launch" else "process",
    )
