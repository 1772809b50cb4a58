"""A campaign's lifecycle as two tables: what a command does, and why a run cannot take it.

Pure: no database, no Dagster. The store applies a decision as a compare-and-set on the status
and version it was made from, so a run, both sensors and a second operator acting at the same
moment cannot undo each other. The claim, `trigger`, the HTTP API and preview all refuse a
campaign through `refusal`, so they say the same thing.

```
draft ──(upstream)──> asset_generated ──claim──> ready_to_launch ──(all sent)──> (stays)
                           │    ^                    │    ^
                     pause │    │ resume       pause │    │ resume
                           v    │ (nothing handled)  v    │ (something handled)
                           paused ───────────────────┘
any status but cancelled ──cancel──> cancelled (final: nothing processes it again)
```
"""

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from campaign_pipeline.clock import as_utc
from campaign_pipeline.errors import (
    CampaignBusy,
    CampaignNotProcessable,
    CampaignScheduled,
    CampaignStopped,
)

Command = Literal["pause", "resume", "cancel"]
COMMANDS: tuple[Command, ...] = ("pause", "resume", "cancel")
# A run sending for a campaign in one of these statuses stops.
STOPPED_STATUSES = frozenset({"paused", "cancelled"})
PAUSABLE_STATUSES = frozenset({"asset_generated", "ready_to_launch"})
# Statuses a run can take a campaign from: claimed, or resumed.
PROCESSABLE_STATUSES = frozenset({"asset_generated", "ready_to_launch"})

UNCHANGED = "unchanged"
# (command, status) -> the new status, or UNCHANGED (nothing to do, no error). A pair missing
# here is refused. A resumed campaign whose recipients were handled (some has an outcome, or a
# run may still be recording one) continues as ready_to_launch, else starts over.
TRANSITIONS: dict[tuple[Command, str], str] = {
    ("pause", "asset_generated"): "paused",
    ("pause", "ready_to_launch"): "paused",
    ("pause", "paused"): UNCHANGED,
    ("resume", "paused"): "asset_generated",
    ("cancel", "draft"): "cancelled",
    ("cancel", "asset_generated"): "cancelled",
    ("cancel", "ready_to_launch"): "cancelled",
    ("cancel", "paused"): "cancelled",
    ("cancel", "failed"): "cancelled",
    ("cancel", "cancelled"): UNCHANGED,
}
# Why a command is refused, by command (the status is named before it).
REFUSED_BECAUSE: dict[Command, str] = {
    "pause": "only 'asset_generated' or 'ready_to_launch' campaigns can be paused",
    "resume": "only 'paused' campaigns can be resumed",
    "cancel": "a cancelled campaign stays cancelled",
}
DONE: dict[tuple[Command, str], str] = {
    ("pause", "paused"): "paused",
    ("pause", UNCHANGED): "is already paused",
    ("cancel", "cancelled"): "cancelled; it will never be processed again",
    ("cancel", UNCHANGED): "is already cancelled",
}


@dataclass(frozen=True)
class Decision:
    """What a command does to a campaign in a given status.

    `target` is the new status, or None when nothing changes; `refused` says the command does
    not apply (a one-line `message` says why), as opposed to having nothing to do.
    """

    target: str | None
    message: str
    refused: bool = False


def decide(command: Command, status: str, *, handled: bool) -> Decision:
    """The decision for `command` on a campaign in `status`, read from `TRANSITIONS`.

    `handled` says whether any recipient has an outcome, or a run may still be recording one:
    a resumed campaign then continues as `ready_to_launch`, else starts over as
    `asset_generated`.
    """
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}")
    target = TRANSITIONS.get((command, status))
    if target is None:
        if command == "resume" and status == "cancelled":
            return Decision(None, "is 'cancelled'; a cancelled campaign is never resumed", True)
        return Decision(None, f"is {status!r}; {REFUSED_BECAUSE[command]}", refused=True)
    if command == "resume":
        target = "ready_to_launch" if handled else target
        return Decision(target, f"resumed as {target!r}")
    message = DONE[(command, target)]
    return Decision(None if target == UNCHANGED else target, message)


def _by(campaign: Mapping[str, Any], status: str) -> str:
    actor, moment = campaign.get(f"{status}_by"), as_utc(campaign.get(f"{status}_at"))
    when = f" at {moment:%Y-%m-%d %H:%M:%S} UTC" if moment else ""
    return f" (by {actor}{when})" if actor else when


def _live_lease(campaign: Mapping[str, Any], now: datetime) -> bool:
    expires = as_utc(campaign.get("lease_expires_at"))
    return bool(campaign.get("lease_run_id")) and expires is not None and expires >= now


def refusal(
    campaign: Mapping[str, Any],
    *,
    now: datetime | None = None,
    send_now: bool = False,
    pending: int | None = None,
    run_id: str | None = None,
) -> CampaignNotProcessable | None:
    """Why a run cannot take `campaign` (a store row) now, as the error to raise; None if it can.

    Paused or cancelled (`CampaignStopped`), scheduled for later unless `send_now`
    (`CampaignScheduled`), in a status no run takes, or `ready_to_launch` with nothing
    `pending` (when the count is given). With `run_id`, a live lease held by another run is
    `CampaignBusy`; without, the lease is left to the claim (a launcher cannot know whether
    the holder has finished).
    """
    now = now or datetime.now(UTC)
    campaign_id, status = campaign["id"], campaign["status"]
    if status == "paused":
        return CampaignStopped(
            f"campaign {campaign_id} is paused{_by(campaign, 'paused')}; "
            f"`campaign-pipeline resume {campaign_id}` continues it"
        )
    if status == "cancelled":
        return CampaignStopped(
            f"campaign {campaign_id} is cancelled{_by(campaign, 'cancelled')}; "
            "it is never processed again"
        )
    if status not in PROCESSABLE_STATUSES:
        return CampaignNotProcessable(
            f"campaign {campaign_id} is {status!r}; only 'asset_generated' campaigns (or "
            "'ready_to_launch' ones with pending recipients, which are resumed) can be processed"
        )
    send_at = as_utc(campaign.get("send_at"))
    if status == "asset_generated" and send_at and send_at > now and not send_now:
        return CampaignScheduled(
            f"campaign {campaign_id} is scheduled for {send_at:%Y-%m-%d %H:%M:%S} UTC; "
            "it starts then (or now, with --now)"
        )
    if status != "ready_to_launch":
        return None
    holder = campaign.get("lease_run_id")
    if run_id is not None and holder != run_id and _live_lease(campaign, now):
        expires = as_utc(campaign["lease_expires_at"])
        return CampaignBusy(
            f"campaign {campaign_id} is being processed by run {holder} "
            f"(its lease runs until {expires:%Y-%m-%d %H:%M:%S} UTC)",
            lease_run_id=str(holder),
        )
    if pending == 0:
        return CampaignNotProcessable(
            f"campaign {campaign_id} is 'ready_to_launch' with no pending recipients; "
            "there is nothing left to send"
        )
    return None
