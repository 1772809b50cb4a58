"""Start `process_campaign_messages` for one campaign through the Dagster webserver's GraphQL API.

This is the spec's `POST /api/campaigns/:campaignId/process-messages`: the campaign is checked in
the campaign store (`lifecycle.refusal` says why a run cannot take it), Dagster is asked whether a
run for it is already in progress, and the run is launched with the run config and tags the
sensor gives it, so the instance's run queue (one run per `campaign_id` tag) and the campaign's
lease treat it like any other run. `trigger` is the command's whole course, following the run to
its end when asked.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg

from campaign_pipeline.clock import utcnow
from campaign_pipeline.defs.jobs import campaign_run_config
from campaign_pipeline.defs.tags import campaign_tags
from campaign_pipeline.errors import CampaignNotFound, CampaignNotProcessable, InvalidCampaignId
from campaign_pipeline.lifecycle import refusal
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.services.dagster_client import DagsterWebserver
from campaign_pipeline.settings import campaign_send_processes
from campaign_pipeline.text import canonical_campaign_id


@dataclass(frozen=True)
class TriggerableCampaign:
    """A campaign the pipeline may process now, as the store has it."""

    id: str
    organization_id: str | None
    status: str
    pending: int
    name: str = ""


def campaign_id_or_error(raw: str) -> str:
    """The campaign id in canonical UUID form; raises `InvalidCampaignId` if it is not a UUID."""
    try:
        return canonical_campaign_id(raw)
    except ValueError as error:
        raise InvalidCampaignId(str(error)) from None


def check_processable(
    store: CampaignStore, campaign_id: str, send_now: bool = False
) -> TriggerableCampaign:
    """The campaign, if `CampaignStore.claim` would take it; else why not, as the claim says it.

    `lifecycle.refusal` decides: `asset_generated` is claimed (once its `send_at` has come, or
    with `send_now`); `ready_to_launch` is resumed, which is only worth a run while recipients
    are still pending; `paused` and `cancelled` campaigns are refused. Whether another run
    holds the campaign is asked of Dagster (`DagsterWebserver.runs_in_progress`); the claim
    itself still checks the lease.

    Raises:
        CampaignNotFound: no campaign has that id.
        CampaignNotProcessable: its status or schedule keeps a run from taking it now.
    """
    campaign = store.campaigns.get(campaign_id)
    if campaign is None:
        raise CampaignNotFound(f"campaign {campaign_id} does not exist")
    now = utcnow()
    # Counting reads the campaign's whole audience: only once its status does not refuse it.
    if refused := refusal(campaign, now=now, send_now=send_now):
        raise refused
    pending = store.audience.counts(campaign_id)["pending"]
    if refused := refusal(campaign, now=now, send_now=send_now, pending=pending):
        raise refused
    return TriggerableCampaign(
        campaign_id, campaign["organization_id"], campaign["status"], pending, campaign["name"]
    )


def trigger_campaign(
    store: CampaignStore, webserver: DagsterWebserver, campaign_id: str, send_now: bool = False
) -> tuple[TriggerableCampaign, str]:
    """Check the campaign and its runs, then launch a run for it; returns the campaign and run id.

    Checking and launching are two requests, so two triggers at the same moment can both
    launch; the run queue's limit of one run per `campaign_id` and the campaign's lease still
    let only one of them send.
    """
    campaign = check_processable(store, campaign_id, send_now)
    in_progress = webserver.runs_in_progress(campaign_id)
    if in_progress:
        run_id, status = in_progress[0]
        raise CampaignNotProcessable(
            f"campaign {campaign_id} already has a run in progress: {run_id} ({status}), "
            f"{webserver.run_url(run_id)}"
        )
    config_fields: dict[str, Any] = {"send_now": True} if send_now else {}
    # Dagster's GraphQL adds partitions only for assets; the run's claim files the run under
    # the campaign's partition instead.
    run_id = webserver.launch(
        campaign_run_config(campaign_id, campaign_send_processes(), **config_fields),
        campaign_tags(campaign_id, campaign.organization_id, campaign.name),
    )
    return campaign, run_id


def trigger(
    store: CampaignStore,
    webserver: DagsterWebserver,
    raw_campaign_id: str,
    *,
    wait: bool,
    send_now: bool = False,
    out: Callable[[str], None],
    err: Callable[[str], None],
    poll_seconds: float = 1.0,
) -> int:
    """The `trigger` command: launch, print the run and its link, optionally follow it.

    Returns the exit status: 0 when launched (or, with `wait`, succeeded), 1 when the followed
    run failed or was canceled. Problems a person can fix raise a `CampaignPipelineError`
    (an invalid id, a campaign no run may take now, a webserver that cannot be used).
    """
    campaign_id = campaign_id_or_error(raw_campaign_id)
    campaign, run_id = trigger_campaign(store, webserver, campaign_id, send_now)
    action = "resume" if campaign.status == "ready_to_launch" else "process"
    out(f"launched run {run_id} to {action} campaign {campaign_id}: {webserver.run_url(run_id)}")
    if not wait:
        return 0
    outcome = webserver.wait(run_id, poll_seconds)
    if outcome.status != dg.DagsterRunStatus.SUCCESS:
        verb = "was canceled" if outcome.status == dg.DagsterRunStatus.CANCELED else "failed"
        err(f"run {run_id} {verb}: {outcome.reason or 'see ' + webserver.run_url(run_id)}")
        return 1
    counts = store.audience.counts(campaign_id)
    out(
        f"run {run_id} succeeded; the campaign {campaign_id}: {counts['ready_to_send']} queued, "
        f"{counts['failed']} failed, {counts['pending']} pending"
    )
    return 0
