"""One campaign as an operator sees it: status, schedule, counts, progress, last error, runs.

`campaign_report` builds the one document: `campaign-pipeline status --json` prints it (and
`status` as a table, `format_report`), `GET /api/campaigns/{id}` answers with it. The runs come
from `dagster_client`: the Dagster instance's records on the command line, the webserver's
GraphQL API in the HTTP API, as the same `RunSummary` linked to the UI the same way.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from campaign_pipeline.clock import as_utc
from campaign_pipeline.errors import CampaignNotFound
from campaign_pipeline.resources.campaign_store import CampaignStore


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
    handled, last = store.audience.progress_since(campaign_id, run.start_time)
    elapsed = ((last or run.start_time) - run.start_time).total_seconds()
    rate = handled / elapsed if handled and elapsed > 0 else None
    return {
        "run_id": run.run_id,
        "handled": handled,
        "messages_per_second": round(rate, 1) if rate else None,
        "eta_seconds": round(pending / rate) if rate else None,
    }


def campaign_report(
    store: CampaignStore,
    campaign_id: str,
    runs: Sequence[RunSummary],
    runs_error: str | None = None,
) -> dict[str, Any]:
    """The `status --json` document, which the HTTP API answers with too.

    `runs_error` says why `runs` is empty when Dagster did not answer.

    Raises:
        CampaignNotFound: no campaign has that id.
    """
    campaign = store.campaigns.get(campaign_id)
    if campaign is None:
        raise CampaignNotFound(f"campaign {campaign_id} does not exist")
    counts = store.audience.counts(campaign_id)
    return {
        "id": campaign_id,
        "name": campaign["name"],
        "message_type": campaign["message_type"],
        "status": campaign["status"],
        "send_at": _iso(campaign["send_at"]),
        "counts": counts,
        "failed_by_code": store.audience.failed_by_code(campaign_id),
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
        "runs_error": runs_error,
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
    if report["failed_by_code"]:
        by_code = ", ".join(f"{count} {code}" for code, count in report["failed_by_code"].items())
        lines.append(f"failed      {by_code}")
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
