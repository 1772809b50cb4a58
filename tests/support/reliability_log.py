"""One JSON line per scenario, for `scripts/reliability_report.py` to turn into a table.

`record` appends to the file named by `RELIABILITY_LOG` and does nothing when it is unset, so
the tests run the same either way. Lines are appended whole with one `write` on a file opened for
appending, so several test processes may share a log.
"""

import json
import os
from collections.abc import Sequence
from typing import Any

from campaign_pipeline.resources.campaign_store import CampaignStore
from tests.support.fault_proxy import FaultProxy
from tests.support.invariant import InvariantReport

LOG_VARIABLE = "RELIABILITY_LOG"


def record(scenario: str, **fields: Any) -> None:
    """Append `{"scenario": scenario, **fields}` to $RELIABILITY_LOG, if it is set."""
    path = os.environ.get(LOG_VARIABLE)
    if not path:
        return
    line = json.dumps({"scenario": scenario, **fields}, sort_keys=True, default=str) + "\n"
    with open(path, "a", encoding="utf-8") as log:
        log.write(line)


def log_exposure_sweep(
    name: str, *, planted: Sequence[str], searched: Sequence[str], texts: int
) -> None:
    """One line of the report's secrets table: what was planted (named, never the value), where
    it was looked for and in how many texts. Written only after the search found nothing."""
    record(
        name,
        group="secrets and tokens",
        kind="exposure",
        planted=list(planted),
        searched=list(searched),
        texts=texts,
        found=0,
    )


def duplicates(report: InvariantReport) -> int:
    return sum(report.duplicates.values())


def log_scenario(
    name: str,
    *,
    group: str,
    fifo: bool,
    store: CampaignStore,
    injected: str,
    proxy: FaultProxy | None,
    report: InvariantReport,
    runs: list[str],
    duplicate_bound: int = 0,
    also_injected: dict[str, int] | None = None,
    **extra: Any,
) -> None:
    """One line of the reliability report: what was injected, how often, what was observed."""
    summary = proxy.summary() if proxy else {}
    record(
        name,
        group=group,
        queue="FIFO" if fifo else "standard",
        database="PostgreSQL" if store.engine.dialect.name == "postgresql" else "SQLite",
        injected=injected,
        injections=summary.get("injected", {}) | (also_injected or {}),
        batch_calls=summary.get("calls", {}).get("SendMessageBatch", 0),
        unanswered_entries=summary.get("unanswered_entries", 0),
        deduplicated_entries=summary.get("deduplicated_entries", 0),
        recipients=report.queued + report.failed + report.pending,
        queued=report.queued,
        failed=report.failed,
        pending=report.pending,
        duplicates=duplicates(report),
        duplicate_bound=duplicate_bound,
        runs=runs,
        **extra,
    )
