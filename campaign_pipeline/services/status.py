"""One campaign as an operator sees it: status, schedule, counts, progress, last error, runs.

Built from the campaign store and the Dagster instance's runs of the campaign; printed by
`campaign-pipeline status` as a table or as one JSON document (`--json`).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from campaign_pipeline.clock import as_utc
from campaign_pipeline.defs.tags import CAMPAIGN_ID_TAG
from campaign_pipeline.resources.campaign_store import CampaignStore

# Runs of a campaign listed, newest first.
RUNS_SHOWN = 10


@dataclass(frozen=True)
class RunSummary:
    """A run of the campaign, as listed with its status."""

    run_id: str
    status: str
    start_time: datetime | None
    end_time: datetime | None
    url: str

    @property
    def sending(self) -> bool:
        """Started and not finished: the run whose progress is shown."""
        return self.status in ("STARTED", "CANCELING")


def utc_from_timestamp(timestamp: float | None) -> datetime | None:
    """A run's start or end time (seconds since the epoch, or None) as a UTC datetime."""
    return datetime.fromtimestamp(timestamp, UTC) if timestamp else None


def campaign_runs(
    instance: dg.DagsterInstance, campaign_id: str, dagster_url: str
) -> list[RunSummary]:
    """The campaign's latest runs (by its `campaign_id` tag), newest first."""
    records = instance.get_run_records(
        dg.RunsFilter(tags={CAMPAIGN_ID_TAG: campaign_id}), limit=RUNS_SHOWN
    )
    return [
        RunSummary(
            run_id=record.dagster_run.run_id,
            status=record.dagster_run.status.value,
            start_time=utc_from_timestamp(record.start_time),
            end_time=utc_from_timestamp(record.end_time),
            url=f"{dagster_url.rstrip('/')}/runs/{record.dagster_run.run_id}",
        )
        for record in records
    ]


def _iso(moment: datetime | None) -> str | None:
    moment = as_utc(moment)
    return moment.isoformat(timespec="seconds") if moment else None


def _progress(
    store: CampaignStore, campaign_id: str, runs: Sequence[RunSummary], pending: int
) -> dict[str, Any] | None:
    """The sending run's messages per second and the time left at that pace."""
    run = next((run for run in runs if run.sending and run.start_time), None)
    if run is None or run.start_time is None:
        return None
    handled, last = store.progress_since(campaign_id, run.start_time)
    elapsed = ((last or run.start_time) - run.start_time).total_seconds()
    rate = handled / elapsed if handled and elapsed > 0 else None
    return {
        "run_id": run.run_id,
        "handled": handled,
        "messages_per_second": round(rate, 1) if rate else None,
        "eta_seconds": round(pending / rate) if rate else None,
    }


def campaign_report(
    store: CampaignStore, campaign_id: str, runs: Sequence[RunSummary]
) -> dict[str, Any] | None:
    """The `status --json` document, or None when the campaign does not exist."""
    campaign = store.get_campaign(campaign_id)
    if campaign is None:
        return None
    counts = store.count_recipients(campaign_id)
    return {
        "id": campaign_id,
        "name": campaign["name"],
        "message_type": campaign["message_type"],
        "status": campaign["status"],
        "send_at": _iso(campaign["send_at"]),
        "counts": counts,
        "progress": _progress(store, campaign_id, runs, counts["pending"]),
        "last_error": campaign["last_error"],
        "last_error_at": _iso(campaign["last_error_at"]),
        "last_error_run_id": campaign["last_error_run_id"],
        "paused_at": _iso(campaign["paused_at"]),
        "paused_by": campaign["paused_by"],
        "resumed_at": _iso(campaign["resumed_at"]),
        "resumed_by": campaign["resumed_by"],
        "cancelled_at": _iso(campaign["cancelled_at"]),
        "cancelled_by": campaign["cancelled_by"],
        "runs": [
            {
                "run_id": run.run_id,
                "status": run.status,
                "start_time": _iso(run.start_time),
                "end_time": _iso(run.end_time),
                "url": run.url,
            }
            for run in runs
        ],
    }


def _seconds(seconds: int) -> str:
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def format_report(report: dict[str, Any]) -> list[str]:
    """The report as the lines `status` prints (phone numbers never appear in it)."""
    counts = report["counts"]
    lines = [
        f"campaign    {report['id']} {report['name']!r} ({report['message_type']})",
        f"status      {report['status']}",
        f"send_at     {report['send_at'] or '-'}",
        f"recipients  {sum(counts.values())}: {counts['ready_to_send']} ready_to_send, "
        f"{counts['failed']} failed, {counts['pending']} pending",
    ]
    progress = report["progress"]
    if progress:
        pace = (
            f"{progress['messages_per_second']} messages/s, about "
            f"{_seconds(progress['eta_seconds'])} left"
            if progress["messages_per_second"]
            else "no outcome recorded yet"
        )
        lines.append(f"progress    run {progress['run_id']}: {pace}")
    for action in ("paused", "resumed", "cancelled"):
        if report[f"{action}_at"]:
            lines.append(
                f"{action:<11} {report[f'{action}_at']} by {report[f'{action}_by'] or '?'}"
            )
    if report["last_error"]:
        lines.append(f"last error  {report['last_error']} ({report['last_error_at']})")
    lines.append(f"runs        {len(report['runs']) or 'none'}")
    lines += [f"  {run['run_id']}  {run['status']:<9} {run['url']}" for run in report["runs"]]
    return lines
