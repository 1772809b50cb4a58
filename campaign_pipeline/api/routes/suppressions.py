"""An organization's suppression list: who its campaigns never message (opt-outs).

Read tokens list it; operator tokens add and remove numbers, recorded as done by the token's
name and the caller's address. The same checks as `suppress`: one malformed number refuses the
whole request.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request

from campaign_pipeline.api import models
from campaign_pipeline.api.dependencies import Operator, Reader, State
from campaign_pipeline.api.error_handlers import ApiError, documented_errors
from campaign_pipeline.phone_numbers import E164_PATTERN
from campaign_pipeline.privacy import mask_phone_numbers
from campaign_pipeline.services.suppressions import (
    ORGANIZATION_ID,
    check_organization_id,
    suppress,
    unsuppress,
)

router = APIRouter(prefix="/api/organizations", tags=["suppressions"])

OrganizationId = Annotated[
    str,
    Path(
        description="the organization's id, as its campaigns carry it",
        pattern=ORGANIZATION_ID.pattern,
    ),
]


@router.get(
    "/{organization_id}/suppressions",
    response_model=list[models.SuppressionEntry],
    responses=documented_errors(401, 422, 503),
)
def list_suppressions(
    organization_id: OrganizationId, token: Reader, state: State
) -> list[dict[str, Any]]:
    """The organization's suppressed numbers, by number."""
    listed = state.store.suppressions.listed(check_organization_id(organization_id))
    return [suppression.as_dict() for suppression in listed]


@router.post(
    "/{organization_id}/suppressions",
    response_model=models.SuppressionsAdded,
    responses=documented_errors(400, 401, 403, 413, 422, 503),
)
def add_suppressions(
    organization_id: OrganizationId,
    body: models.SuppressRequest,
    request: Request,
    token: Operator,
    state: State,
) -> dict[str, Any]:
    """Suppress numbers: no campaign of the organization (of its scope) queues them again."""
    client = request.client.host if request.client else "unknown"
    added = suppress(
        state.store.suppressions,
        organization_id,
        body.phone_numbers,
        body.scope,
        body.reason,
        f"api token {token.label} from {client}",
    )
    return {
        "organization_id": organization_id,
        "scope": body.scope,
        "added": added.added,
        "present": added.present,
    }


@router.delete(
    "/{organization_id}/suppressions/{phone_number}",
    response_model=models.SuppressionRemoved,
    responses=documented_errors(401, 403, 404, 422, 503),
)
def remove_suppression(
    organization_id: OrganizationId,
    phone_number: Annotated[
        str, Path(description="an E.164 number (its + as %2B)", pattern=E164_PATTERN)
    ],
    token: Operator,
    state: State,
) -> dict[str, Any]:
    """Take a number off the list."""
    if not unsuppress(state.store.suppressions, organization_id, [phone_number]):
        raise ApiError(
            404,
            f"{mask_phone_numbers(phone_number)} is not suppressed for organization "
            f"{organization_id}",
        )
    return {"organization_id": organization_id, "removed": 1}
