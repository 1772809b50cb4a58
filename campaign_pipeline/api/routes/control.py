"""An operator's commands on a campaign: pause, resume and cancel, as the CLI's commands do them.

Each is one compare-and-set in the campaign store (`CampaignStore.control`), recorded as done by
the token's name and the caller's address.
"""

import uuid
from typing import Any

from fastapi import APIRouter, Request

from campaign_pipeline.api import models
from campaign_pipeline.api.dependencies import ApiState, CampaignId, Operator, State
from campaign_pipeline.api.error_handlers import documented_errors
from campaign_pipeline.api.tokens import ApiToken
from campaign_pipeline.lifecycle import Command

router = APIRouter(prefix="/api/campaigns", tags=["control"])

CONTROL_ERRORS = documented_errors(400, 401, 403, 404, 409, 413, 422, 503)


def _control(
    state: ApiState,
    campaign_id: uuid.UUID,
    command: Command,
    request: Request,
    token: ApiToken,
    accept_invalid: bool = False,
) -> dict[str, Any]:
    client = request.client.host if request.client else "unknown"
    actor = f"api token {token.label} from {client}"
    result = state.store.control.apply(str(campaign_id), command, actor, accept_invalid)
    return {
        "campaign_id": result.campaign_id,
        "command": result.command,
        "before": result.before,
        "after": result.after,
        "changed": result.changed,
        "message": result.message,
    }


@router.post("/{campaign_id}/pause", response_model=models.ControlAnswer, responses=CONTROL_ERRORS)
def pause(
    campaign_id: CampaignId, request: Request, token: Operator, state: State
) -> dict[str, Any]:
    """Pause the campaign: a run sending for it stops within seconds, the rest pending."""
    return _control(state, campaign_id, "pause", request, token)


@router.post("/{campaign_id}/resume", response_model=models.ControlAnswer, responses=CONTROL_ERRORS)
def resume(
    campaign_id: CampaignId,
    request: Request,
    token: Operator,
    state: State,
    body: models.ResumeRequest | None = None,
) -> dict[str, Any]:
    """Resume a paused campaign: the processing sensor starts a run for the rest."""
    accept_invalid = bool(body and body.accept_invalid)
    return _control(state, campaign_id, "resume", request, token, accept_invalid)


@router.post("/{campaign_id}/cancel", response_model=models.ControlAnswer, responses=CONTROL_ERRORS)
def cancel(
    campaign_id: CampaignId, request: Request, token: Operator, state: State
) -> dict[str, Any]:
    """Cancel the campaign for good: its pending recipients are never sent."""
    return _control(state, campaign_id, "cancel", request, token)
