"""The job as the code location defines it, run with its send steps in processes of their own."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest

from campaign_pipeline.defs.jobs import campaign_run_config

ROOT = Path(__file__).resolve().parents[2]


def definitions_job() -> dg.JobDefinition:
    """The job as the code location defines it, resources from the environment."""
    from campaign_pipeline.definitions import defs

    return defs.get_job_def("process_campaign_messages")


@contextmanager
def run_in_send_processes(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    *,
    database_url: str,
    queue_url: str,
    sqs_endpoint: str,
    campaign_id: str,
    **config: object,
) -> Iterator[tuple[dg.JobExecutionResult, dg.DagsterInstance]]:
    """Run the campaign with two send processes (multiprocess executor) on a test instance.

    The code location's resources read the database and the queue from the environment, which
    the step processes inherit. They are spawned, not forked from a forkserver: a forkserver
    keeps the environment of the first run of this process, so a later test's steps would send
    to an earlier test's queue. Yields the result and the instance, whose logs stay readable.
    """
    monkeypatch.setenv("CAMPAIGN_DATABASE_URL", database_url)
    monkeypatch.setenv("AWS_SQS_QUEUE_URL", queue_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", sqs_endpoint)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    run_config = campaign_run_config(campaign_id, processes=2, **config)
    run_config["execution"]["config"]["multiprocess"]["start_method"] = {"spawn": {}}
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = dg.execute_job(
            dg.reconstructable(definitions_job), instance=instance, run_config=run_config
        )
        yield result, instance
