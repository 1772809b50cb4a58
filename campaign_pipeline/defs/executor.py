"""Where a run's steps execute: chosen by CAMPAIGN_EXECUTOR when the code location loads."""

import os
from collections.abc import Mapping
from typing import Any

import dagster as dg

from campaign_pipeline.errors import SettingsError
from campaign_pipeline.settings import campaign_executor

# Imported once by the multiprocess executor's fork server, so a step process starts warm.
FORKSERVER_PRELOAD = "campaign_pipeline.definitions"

# Read when the code location loads: the job's executor is part of its definition, and the
# run config every launcher writes must match it (so trigger needs the same environment).
CAMPAIGN_EXECUTOR = campaign_executor()


def executor_for(executor: str | None) -> dg.ExecutorDefinition:
    """The job's executor for a CAMPAIGN_EXECUTOR value.

    Raises:
        SettingsError: celery without dagster-celery installed.
    """
    if executor != "celery":
        # In-process or multiprocess, chosen per run in its config (see `campaign_run_config`).
        return dg.multi_or_in_process_executor
    try:
        from campaign_pipeline.defs.celery_executor import campaign_celery_executor
    except ImportError:
        raise SettingsError(
            "CAMPAIGN_EXECUTOR=celery needs dagster-celery: pip install 'campaign-pipeline[celery]'"
        ) from None
    return campaign_celery_executor


def execution_config(executor: str | None, processes: int) -> dict[str, Any]:
    """The run config's `execution.config` for `processes` send steps at once.

    Unset, one process runs every step in the run's own process (a step costs milliseconds)
    and more run shards in parallel under the multiprocess executor, whose steps fork from a
    server that has imported the code location once rather than each starting afresh
    (docs/benchmarks.md). `in_process` runs one step at a time whatever `processes` says;
    `celery` submits at most `processes` steps to the workers at once, its broker and backend
    read from the environment, never written here.
    """
    if executor == "celery":
        return {"max_concurrent": processes}
    if executor == "in_process" or (executor is None and processes == 1):
        return {"in_process": {}}
    return {
        "multiprocess": {
            "max_concurrent": processes,
            "start_method": {"forkserver": {"preload_modules": [FORKSERVER_PRELOAD]}},
        }
    }


def send_steps_at_once(run_config: Mapping[str, Any], shards: int) -> int:
    """How many of a run's `shards` send steps its executor may run at the same time.

    One under `in_process`; the multiprocess executor's `max_concurrent` (unset or 0: the
    machine's CPUs, as Dagster does, which is also its default without an `execution` block);
    another executor's `max_concurrent`, else every shard at once.
    """
    execution: Any = run_config.get("execution") or {}
    settings: Any = execution.get("config") or {"multiprocess": {}}
    if "in_process" in settings:
        return 1
    if "multiprocess" in settings:
        limit = (settings["multiprocess"] or {}).get("max_concurrent") or os.cpu_count() or 1
    else:
        limit = settings.get("max_concurrent") or shards
    return max(1, min(shards, int(limit)))
