"""The sensors that start, record, pause and resume runs of process_campaign_messages."""

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from campaign_pipeline.defs.jobs import campaign_run_config, process_campaign_messages
from campaign_pipeline.defs.partitions import campaign_partitions
from campaign_pipeline.defs.tags import CAMPAIGN_ID_TAG, RESUME_ATTEMPT_TAG, campaign_tags
from campaign_pipeline.privacy import mask_phone_numbers
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.sending.lease import pause_for_termination
from campaign_pipeline.settings import (
    background_job_interval_seconds,
    campaign_batch_size,
    campaign_max_resume_attempts,
    campaign_processing_interval_seconds,
    campaign_send_processes,
)
from campaign_pipeline.text import one_line

# Every status but the three final ones: a queued run (waiting for its campaign's concurrency
# slot, say) will claim the campaign too. `DagsterRun.is_finished` is the same test.
UNFINISHED_RUN_STATUSES = [
    status
    for status in dg.DagsterRunStatus
    if status
    not in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
]
MAX_ERROR_CHARACTERS = 1_000


@dg.sensor(
    job=process_campaign_messages,
    # A sensor's interval is part of its definition, so it is read when the code location loads.
    minimum_interval_seconds=campaign_processing_interval_seconds(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Start process_campaign_messages for campaigns in asset_generated, oldest first.",
)
def asset_generated_campaigns_sensor(
    context: dg.SensorEvaluationContext, campaign_store: CampaignStore
) -> dg.SensorResult | dg.SkipReason:
    """One run request per waiting campaign, at most CAMPAIGN_BATCH_SIZE per tick.

    Waiting: in asset_generated with no send_at ahead, or resumed. Each campaign becomes a
    partition of the job, so the UI lists it.
    """
    limit = campaign_batch_size()
    processes = campaign_send_processes()
    waiting = campaign_store.sweeps.campaigns_to_process(limit)
    if not waiting:
        scheduled = campaign_store.sweeps.next_scheduled()
        if scheduled is None:
            return dg.SkipReason("No campaign is in asset_generated.")
        return dg.SkipReason(
            f"No campaign is due. Next: {scheduled.name!r} ({scheduled.id}) at "
            f"{scheduled.send_at:%Y-%m-%d %H:%M:%S} UTC."
        )
    context.log.info(f"{len(waiting)} campaigns to start (at most {limit} per tick)")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                # The version changes whenever this pipeline or an operator changes the
                # campaign's status, so a campaign set back to asset_generated after processing
                # (or resumed) is processed again.
                run_key=f"{campaign.id}:v{campaign.version}",
                run_config=campaign_run_config(campaign.id, processes),
                tags=campaign_tags(campaign.id, campaign.organization_id, campaign.name),
                partition_key=campaign.id,
            )
            for campaign in waiting
        ],
        dynamic_partitions_requests=[
            campaign_partitions.build_add_request([campaign.id for campaign in waiting])
        ],
    )


def campaign_id_of(run: dg.DagsterRun) -> str | None:
    """The campaign a run of process_campaign_messages processes: its tag, else its config."""
    if campaign_id := run.tags.get(CAMPAIGN_ID_TAG):
        return campaign_id
    config: Any = run.run_config
    for key in ("ops", "claim_campaign", "config", "campaign_id"):
        config = config.get(key) if isinstance(config, Mapping) else None
    return config if isinstance(config, str) else None


def _error_message(error: Any) -> str:
    """An error's class and message, unwrapped from Dagster's step-execution wrapper."""
    while error.cls_name == "DagsterExecutionStepExecutionError" and error.cause is not None:
        error = error.cause
    name, separator, detail = error.message.strip().partition(": ")
    return name.rsplit(".", 1)[-1] + separator + detail


def describe_run_failure(context: dg.RunFailureSensorContext) -> str:
    """Why the run failed, step by step, in one line of at most MAX_ERROR_CHARACTERS."""
    parts = []
    for event in context.get_step_failure_events():
        data = event.step_failure_data
        if data.user_failure_data is not None and data.user_failure_data.description:
            parts.append(f"{event.step_key}: {data.user_failure_data.description}")
        elif data.error is not None:
            parts.append(f"{event.step_key}: {_error_message(data.error)}")
    if not parts:
        # No step failed: the run worker died, or the run failed before or between steps.
        error = getattr(context.failure_event.event_specific_data, "error", None)
        parts.append(_error_message(error) if error else context.failure_event.message or "")
    text = one_line(mask_phone_numbers("; ".join(parts))) or "the run failed"
    if len(text) > MAX_ERROR_CHARACTERS:
        text = text[: MAX_ERROR_CHARACTERS - 1] + "…"
    return text


@dg.run_failure_sensor(
    monitored_jobs=[process_campaign_messages],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Write a failed run's error onto its campaign and release the lease it held.",
)
def record_campaign_run_failure(
    context: dg.RunFailureSensorContext, campaign_store: CampaignStore
) -> None:
    """Set the campaign's last_error, last_error_at and last_error_run_id from the failed run."""
    run = context.dagster_run
    campaign_id = campaign_id_of(run)
    if campaign_id is None:
        context.log.warning(f"Run {run.run_id} names no campaign; nothing to record")
        return
    record = context.instance.get_run_record_by_id(run.run_id)
    failed_at = (
        datetime.fromtimestamp(record.end_time, UTC)
        if record is not None and record.end_time
        else datetime.now(UTC)
    )
    error = describe_run_failure(context)
    if campaign_store.claims.record_run_failure(campaign_id, run.run_id, error, failed_at):
        context.log.info(f"Campaign {campaign_id}: recorded the failure of run {run.run_id}")
    else:
        context.log.info(
            f"Campaign {campaign_id}: run {run.run_id} failed, but a later run has taken the "
            "campaign on; its error is not recorded on the campaign"
        )


@dg.sensor(
    job=process_campaign_messages,
    minimum_interval_seconds=background_job_interval_seconds(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Resume campaigns a failed or crashed run left ready_to_launch with pending "
    "recipients; fail them after CAMPAIGN_MAX_RESUME_ATTEMPTS resume runs.",
)
def resume_stalled_campaigns_sensor(
    context: dg.SensorEvaluationContext, campaign_store: CampaignStore
) -> dg.SensorResult | dg.SkipReason:
    """One resume run per stalled campaign, at most CAMPAIGN_BATCH_SIZE campaigns per tick."""
    limit = campaign_batch_size()
    max_attempts = campaign_max_resume_attempts()
    processes = campaign_send_processes()
    # Runs not finished hold their campaign, whether or not they have claimed it yet.
    unfinished = context.instance.get_runs(
        dg.RunsFilter(job_name=process_campaign_messages.name, statuses=UNFINISHED_RUN_STATUSES)
    )
    stalled = campaign_store.sweeps.stalled(
        limit,
        busy_campaign_ids={
            campaign_id for run in unfinished if (campaign_id := campaign_id_of(run))
        },
        live_run_ids={run.run_id for run in unfinished},
    )
    if not stalled:
        return dg.SkipReason("No campaign is stalled in ready_to_launch with pending recipients.")
    run_requests = []
    given_up = 0
    for campaign in stalled:
        terminated = _latest_run_if_canceled(context.instance, campaign.id)
        if terminated is not None:
            # Terminated, and its run could not pause the campaign itself (killed outright):
            # an operator's stop is not a stall to recover from.
            done = pause_for_terminated_run(context.instance, campaign_store, terminated)
            context.log.info(f"Not resuming: {done}")
            continue
        if campaign.lease_run_id and context.instance.get_run_by_id(campaign.lease_run_id) is None:
            # A run of another instance (or of execute_in_process) may still be sending: its
            # lease is respected until it expires, as claim_campaign respects it.
            context.log.info(
                f"Campaign {campaign.id} is leased by run {campaign.lease_run_id}, unknown to "
                "this instance; waiting for the lease to expire"
            )
            continue
        if campaign.resume_attempts >= max_attempts:
            reason = (
                f"gave up after {campaign.resume_attempts} resume attempts; "
                f"last error: {campaign.last_error or 'none recorded'}"
            )
            if campaign_store.sweeps.give_up(campaign, reason):
                given_up += 1
                context.log.warning(f"Campaign {campaign.id} failed: {reason}")
            continue
        # Counted before the run exists: a request the daemon never launches still uses up an
        # attempt, so the bound holds whatever happens to the runs.
        if not campaign_store.sweeps.start_resume_attempt(campaign):
            continue
        attempt = campaign.resume_attempts + 1
        run_requests.append(
            dg.RunRequest(
                run_key=f"{campaign.id}:v{campaign.version}:resume{attempt}",
                run_config=campaign_run_config(campaign.id, processes),
                tags=campaign_tags(campaign.id, campaign.organization_id)
                | {RESUME_ATTEMPT_TAG: str(attempt)},
                partition_key=campaign.id,
            )
        )
        context.log.info(f"Resuming campaign {campaign.id}: attempt {attempt} of {max_attempts}")
    if not run_requests:
        return dg.SkipReason(f"No campaign to resume; gave up on {given_up}.")
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[
            campaign_partitions.build_add_request(
                [request.partition_key for request in run_requests if request.partition_key]
            )
        ],
    )


def _latest_run_if_canceled(instance: dg.DagsterInstance, campaign_id: str) -> dg.DagsterRun | None:
    """The campaign's latest run, if it was canceled (terminated)."""
    runs = instance.get_runs(dg.RunsFilter(tags={CAMPAIGN_ID_TAG: campaign_id}), limit=1)
    if not runs or runs[0].status != dg.DagsterRunStatus.CANCELED:
        return None
    return runs[0]


def pause_for_terminated_run(
    instance: dg.DagsterInstance, campaign_store: CampaignStore, run: dg.DagsterRun
) -> str | None:
    """Pause the campaign of a terminated run (see `lease.pause_for_termination`).

    Returns what was done, in one line, or None when the run names no campaign.
    """
    campaign_id = campaign_id_of(run)
    if campaign_id is None:
        return None
    record = instance.get_run_record_by_id(run.run_id)
    ended = datetime.fromtimestamp(record.end_time, UTC) if record and record.end_time else None
    _, done = pause_for_termination(campaign_store.database, campaign_id, run.run_id, ended)
    return done


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.CANCELED,
    monitored_jobs=[process_campaign_messages],
    minimum_interval_seconds=campaign_processing_interval_seconds(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Pause the campaign of a run terminated from the UI or GraphQL (terminateRun), "
    "so no sensor starts it again; `campaign-pipeline resume` continues it.",
)
def pause_campaign_of_terminated_run(
    context: dg.RunStatusSensorContext, campaign_store: CampaignStore
) -> None:
    """A terminated run pauses its campaign itself; this catches runs that could not."""
    done = pause_for_terminated_run(context.instance, campaign_store, context.dagster_run)
    if done:
        context.log.info(done)
