"""Ops that claim a campaign, queue its messages on SQS and record the result."""

import os
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dagster as dg
import sqlalchemy as sa
from pydantic import Field

from campaign_pipeline.clock import as_utc
from campaign_pipeline.defs.tags import (
    CAMPAIGN_NAME_TAG,
    CAMPAIGN_PARTITIONS,
    PARTITION_SET_TAG,
    PARTITION_TAG,
    STOPPED_TAG,
    campaign_name_tag,
)
from campaign_pipeline.dispatch import SendStats, StopSignal, merge_stats, queue_campaign_messages
from campaign_pipeline.errors import (
    CampaignBusy,
    CampaignDefinitionError,
    CampaignPipelineError,
    CampaignScheduled,
    CampaignStopped,
    SendInterrupted,
    SettingsError,
)
from campaign_pipeline.lifecycle import STOPPED_STATUSES
from campaign_pipeline.pacing import check_rate, rate_per_step
from campaign_pipeline.payloads import CampaignMessage, check_campaign_message
from campaign_pipeline.preflight import EXACT_UP_TO as PREFLIGHT_EXACT_UP_TO
from campaign_pipeline.preflight import SAMPLE_SLICES as PREFLIGHT_SAMPLE_SLICES
from campaign_pipeline.preflight import count_invalid
from campaign_pipeline.resources.campaign_store import CampaignStore, Claim, IdRange
from campaign_pipeline.resources.sqs_queue import SqsQueue
from campaign_pipeline.settings import (
    campaign_max_invalid_fraction,
    campaign_max_messages_per_second,
    campaign_max_rejected,
)
from campaign_pipeline.text import canonical_campaign_id, database_reason

# SQS's largest MaximumMessageSize.
SQS_MAX_MESSAGE_BYTES = 1_048_576
# A dropped database connection is worth another try; anything else about the database is not.
TRANSIENT_DATABASE_ERRORS = (sa.exc.OperationalError, sa.exc.InterfaceError)
# How Dagster stops a step: Terminate in the UI (GraphQL terminateRun), or Ctrl-C on `process`.
INTERRUPTS = (dg.DagsterExecutionInterruptedError, KeyboardInterrupt)


class CampaignConfig(dg.Config):
    """Which campaign to process, and how much of it to hold in memory at once."""

    campaign_id: str = Field(description="UUID of the campaign to process.")
    recipients_per_chunk: int = Field(
        default=50_000, ge=1, description="Pending recipients read and built at a time."
    )
    outcomes_per_write: int = Field(
        default=1_000,
        ge=1,
        description="Outcomes written per database update; a crash loses at most this many.",
    )
    lease_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How long the run's claim on the campaign outlives its last renewal "
        "(every third of it while sending); a crashed run's campaign can be resumed after this.",
    )
    recipients_per_shard: int = Field(
        default=250_000,
        ge=1,
        description="Pending recipients per send step. Steps run in parallel under the "
        "multiprocess (or a distributed) executor; keep shards coarse, each step costs seconds.",
    )
    send_now: bool = Field(
        default=False,
        description="Start a campaign whose send_at is still ahead now (`process --now`).",
    )


@dataclass(frozen=True)
class ClaimedCampaign:
    """A campaign this run holds, with the settings the later ops need."""

    message: CampaignMessage
    resumed: bool
    recipients_per_chunk: int
    outcomes_per_write: int
    lease_seconds: float
    recipients_per_shard: int
    # The run that claimed it. A re-execution from failure reuses this output without running
    # claim_campaign, so its steps claim the campaign for themselves when this differs.
    run_id: str = ""
    # The campaign's rate cap, all its send steps together (None: no cap), as the claim read it.
    max_messages_per_second: float | None = None

    @property
    def id(self) -> str:
        """The campaign's id."""
        return self.message.campaign_id


@dataclass(frozen=True)
class CampaignShard:
    """The pending recipients of a claimed campaign that one send step handles."""

    campaign: ClaimedCampaign
    id_range: IdRange
    # This step's share of the campaign's rate cap (see `plan_shards`); None: no cap.
    max_messages_per_second: float | None = None


def _reasons_table(stats: SendStats) -> dg.MetadataValue:
    """The top failure reasons as a markdown table (reasons never hold a phone number)."""
    reasons = "\n".join(
        f"| {reason.replace('|', '/')} | {count} |"
        for reason, count in stats.failed_by_reason.most_common(20)
    )
    return dg.MetadataValue.md(
        f"| reason | recipients |\n|---|---|\n{reasons}" if reasons else "none"
    )


def _send_metadata(stats: SendStats, queue_url: str) -> dict[str, dg.MetadataValue]:
    return {
        "recipients": dg.MetadataValue.int(stats.recipients),
        "queued": dg.MetadataValue.int(stats.queued),
        "failed": dg.MetadataValue.int(stats.failed),
        "failed_by_reason": _reasons_table(stats),
        "batches": dg.MetadataValue.int(stats.batches),
        "retried_entries": dg.MetadataValue.int(stats.retried_entries),
        "duration_s": dg.MetadataValue.float(round(stats.seconds, 3)),
        "messages_per_s": dg.MetadataValue.float(round(stats.messages_per_second, 1)),
        "queue": dg.MetadataValue.url(queue_url),
    }


def _claim_or_take_over(
    context: dg.OpExecutionContext,
    campaign_store: CampaignStore,
    campaign_id: str,
    lease_seconds: float,
    send_now: bool = False,
) -> Claim:
    """Claim the campaign, taking over the lease of a run this instance knows has finished.

    A run killed outright (SIGKILL, a lost machine) never releases its lease; once Dagster
    has marked it finished, nobody can be sending for it. A holder this instance does not know
    (a run of another DAGSTER_HOME, or of `execute_in_process`) may well be alive: its lease is
    respected until it expires.
    """
    try:
        return campaign_store.claim(campaign_id, context.run_id, lease_seconds, send_now=send_now)
    except CampaignBusy as busy:
        holder = context.instance.get_run_by_id(busy.lease_run_id)
        if holder is None or not holder.is_finished:
            raise
        claim = campaign_store.claim(
            campaign_id,
            context.run_id,
            lease_seconds,
            take_over_from=busy.lease_run_id,
            send_now=send_now,
        )
        context.log.warning(
            f"Took campaign {campaign_id} over from run {busy.lease_run_id}, which is "
            f"{holder.status.value}, before its lease expired"
        )
        return claim


def _claim_for_reexecution(
    context: dg.OpExecutionContext, campaign_store: CampaignStore, campaign: ClaimedCampaign
) -> None:
    """Hold the campaign in a re-execution that reused another run's claim; fail if busy."""
    if campaign.run_id == context.run_id:
        return
    try:
        _claim_or_take_over(context, campaign_store, campaign.id, campaign.lease_seconds)
    except CampaignPipelineError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None
    except TRANSIENT_DATABASE_ERRORS as error:
        raise dg.RetryRequested(max_retries=3, seconds_to_wait=2) from error
    context.log.info(f"Claimed campaign {campaign.id} (claimed by run {campaign.run_id} before)")


def _campaign_id_of_run(context: dg.OpExecutionContext, config: CampaignConfig) -> str:
    """The config's campaign id, which a partitioned run's key must name too."""
    try:
        campaign_id = canonical_campaign_id(config.campaign_id)
    except ValueError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None
    if context.has_partition_key and context.partition_key != campaign_id:
        raise dg.Failure(
            description=f"the run's partition {context.partition_key!r} and its config's "
            f"campaign_id {campaign_id!r} name different campaigns",
            allow_retries=False,
        )
    return campaign_id


def _file_under_campaign(context: dg.OpExecutionContext, campaign_id: str, name: str) -> None:
    """Make the run one of the campaign's partition, with its name, however it was launched.

    The sensors launch runs of the partition already; `trigger` and a hand-written launchRun
    cannot (Dagster's GraphQL adds partitions only for assets), so the claim adds the partition
    and the tags the UI's Partitions tab reads.
    """
    tags = context.run.tags
    missing: dict[str, str] = {}
    if CAMPAIGN_NAME_TAG not in tags:
        missing[CAMPAIGN_NAME_TAG] = campaign_name_tag(name)
    if PARTITION_TAG not in tags:
        context.instance.add_dynamic_partitions(CAMPAIGN_PARTITIONS, [campaign_id])
        missing[PARTITION_TAG] = campaign_id
        # Dagster names a job's partition set after the job.
        missing[PARTITION_SET_TAG] = f"{context.job_name}_partition_set"
    if missing:
        context.instance.add_run_tags(context.run_id, missing)


def _rate_cap(claim: Claim, default: float | None) -> float | None:
    """The campaign's `max_messages_per_second`, else CAMPAIGN_MAX_MESSAGES_PER_SECOND's.

    Raises:
        CampaignDefinitionError: the column holds something other than a positive number.
    """
    if claim.max_messages_per_second is None:
        return default
    try:
        return check_rate(float(claim.max_messages_per_second), "max_messages_per_second")
    except (TypeError, ValueError) as error:
        raise CampaignDefinitionError(str(error)) from None


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


def _preflight(
    context: dg.OpExecutionContext, campaign_store: CampaignStore, claim: Claim, pending: int
) -> None:
    """Hold the campaign back (paused, with why) if too many of its recipients are invalid.

    Payloads are sized against SQS's largest message (1 MiB), so the claim needs no SQS: the
    send still holds each to the queue's own limit.
    """
    campaign_id = claim.message.campaign_id
    try:
        max_invalid = campaign_max_invalid_fraction()
    except SettingsError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None
    if max_invalid >= 1:
        return
    chunks, sampled = campaign_store.preflight_chunks(
        campaign_id, pending, PREFLIGHT_EXACT_UP_TO, PREFLIGHT_SAMPLE_SLICES
    )
    counted = count_invalid(
        claim.message, chunks, SQS_MAX_MESSAGE_BYTES, pending if sampled else None
    )
    verdict = counted.verdict(max_invalid)
    context.log.info(
        f"Preflight of campaign {campaign_id}: {counted.invalid} of {counted.recipients} "
        f"{'sampled ' if sampled else ''}recipients invalid"
    )
    if verdict is None:
        return
    campaign_store.hold_back(
        campaign_id, context.run_id, verdict, f"preflight guard: run {context.run_id}"
    )
    raise dg.Failure(
        description=f"campaign {campaign_id} held back, nothing sent: {verdict}. Fix the "
        "recipients and resume it, or `resume --accept-invalid` to send the valid ones",
        allow_retries=False,
    )


@dg.op(out=dg.Out(ClaimedCampaign, is_required=False))
def claim_campaign(
    context: dg.OpExecutionContext, config: CampaignConfig, campaign_store: CampaignStore
) -> Iterator[dg.Output[ClaimedCampaign]]:
    """Move the campaign from asset_generated to ready_to_launch (or resume it) for this run.

    A paused, cancelled or later-scheduled campaign is left alone: the run ends without
    sending, and without failing (an operator's decision is not an error).
    """
    campaign_id = _campaign_id_of_run(context, config)
    try:
        # Before the claim: a bad setting fails the run without touching the campaign.
        default_cap = campaign_max_messages_per_second()
    except SettingsError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None
    try:
        claim = _claim_or_take_over(
            context, campaign_store, campaign_id, config.lease_seconds, config.send_now
        )
        check_campaign_message(claim.message)
        cap = _rate_cap(claim, default_cap)
    except (CampaignStopped, CampaignScheduled) as left_alone:
        context.instance.add_run_tags(context.run_id, {STOPPED_TAG: str(left_alone)})
        context.log.info(f"Nothing to do: {left_alone}")
        return
    except CampaignDefinitionError as error:
        campaign_store.fail_campaign(campaign_id, str(error))
        raise dg.Failure(
            description=f"campaign {campaign_id} cannot be sent: {error}", allow_retries=False
        ) from None
    except CampaignPipelineError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None
    except TRANSIENT_DATABASE_ERRORS as error:
        raise dg.RetryRequested(max_retries=3, seconds_to_wait=2) from error
    counts = claim.counts
    if not any(counts.values()):
        # Nothing to send is a mistake upstream, not a success to report as "0 queued".
        campaign_store.fail_campaign(campaign_id, "campaign has no recipients")
        raise dg.Failure(
            description=f"campaign {campaign_id} cannot be sent: campaign has no recipients",
            allow_retries=False,
        )
    _file_under_campaign(context, campaign_id, claim.name)
    pending = counts["pending"]
    capped = f", at most {cap:g} messages/s" if cap is not None else ""
    if not (claim.resumed or claim.invalid_accepted):
        _preflight(context, campaign_store, claim, pending)
    context.log.info(
        f"{'Resumed' if claim.resumed else 'Claimed'} campaign {campaign_id} "
        f"({claim.message.message_type}) with {pending} pending recipients{capped}"
    )
    yield dg.Output(
        ClaimedCampaign(
            message=claim.message,
            resumed=claim.resumed,
            recipients_per_chunk=config.recipients_per_chunk,
            outcomes_per_write=config.outcomes_per_write,
            lease_seconds=config.lease_seconds,
            recipients_per_shard=config.recipients_per_shard,
            run_id=context.run_id,
            max_messages_per_second=cap,
        ),
        metadata={
            "campaign_id": campaign_id,
            "campaign_name": claim.name,
            "message_type": claim.message.message_type,
            "resumed": claim.resumed,
            "pending_recipients": pending,
            **({"max_messages_per_second": dg.MetadataValue.float(cap)} if cap else {}),
        },
    )


@dg.op(out=dg.DynamicOut(CampaignShard))
def plan_shards(
    context: dg.OpExecutionContext, campaign: ClaimedCampaign, campaign_store: CampaignStore
) -> Iterator[dg.DynamicOutput[CampaignShard]]:
    """Split the pending recipients into id ranges, one send step each."""
    try:
        id_ranges = campaign_store.id_ranges(campaign.id, campaign.recipients_per_shard)
    except TRANSIENT_DATABASE_ERRORS as error:
        raise dg.RetryRequested(max_retries=3, seconds_to_wait=2) from error
    # The cap is shared equally by the steps that can send at once, so together they stay
    # under it; steps that do not overlap (a short last shard) then send below it.
    steps = send_steps_at_once(context.run_config, len(id_ranges))
    share = rate_per_step(campaign.max_messages_per_second, steps)
    capped = f", {steps} at once, each at most {share:g} messages/s" if share is not None else ""
    context.log.info(f"Campaign {campaign.id}: {len(id_ranges)} shards{capped}")
    for index, id_range in enumerate(id_ranges):
        yield dg.DynamicOutput(
            CampaignShard(campaign, id_range, share), mapping_key=f"shard_{index}"
        )


def _send_off_the_main_thread(send: Callable[[], SendStats], stop: StopSignal) -> SendStats:
    """Run `send` on a thread; an interrupt of this (main) thread stops it the graceful way.

    Dagster stops a step by raising `DagsterExecutionInterruptedError` wherever its main
    thread is. Sending elsewhere lets the interrupt land here: the loop is told to stop, the
    batches in flight answer and are recorded, and only then is the interrupt raised again.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="campaign-send") as runner:
        sending: Future[SendStats] = runner.submit(send)
        try:
            return _wait(sending)
        except INTERRUPTS:
            stop.stop("terminated")
            while True:
                try:
                    _wait(sending)
                    break
                except INTERRUPTS:  # a second interrupt: still let the batches in flight land
                    continue
                except Exception:  # the send's own error matters less than the interrupt
                    break
            raise


def _wait(sending: Future[SendStats]) -> SendStats:
    """The send's result, waking twice a second so that a signal handler runs promptly.

    A handler installed with SA_RESTART (polars installs one for SIGINT) would otherwise not
    run until an untimed wait ended.
    """
    while True:
        try:
            return sending.result(timeout=0.5)
        except TimeoutError:
            continue


def _pause_for_terminated_run(
    context: dg.OpExecutionContext, campaign_store: CampaignStore, campaign_id: str
) -> None:
    """Pause the campaign of a run an operator terminated, so nothing starts it again."""
    actor = f"Dagster: run {context.run_id} was terminated"
    result = campaign_store.control(campaign_id, "pause", actor)
    campaign_store.finish(campaign_id, context.run_id)
    context.log.warning(f"{result.message}; `campaign-pipeline resume {campaign_id}` continues it")


@dg.op
def send_campaign_messages(
    context: dg.OpExecutionContext,
    shard: CampaignShard,
    campaign_store: CampaignStore,
    sqs_queue: SqsQueue,
) -> SendStats:
    """Build each pending recipient's payload and queue it on SQS in batches of ten."""
    campaign = shard.campaign
    _claim_for_reexecution(context, campaign_store, campaign)

    def log_progress(stats: SendStats) -> None:
        context.log.info(
            f"{stats.recipients} recipients so far: {stats.queued} queued, {stats.failed} failed"
        )

    stop = StopSignal()

    try:
        max_rejected = campaign_max_rejected()
    except SettingsError as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None

    def send() -> SendStats:
        return queue_campaign_messages(
            campaign.message,
            campaign_store,
            sqs_queue,
            context.run_id,
            recipients_per_chunk=campaign.recipients_per_chunk,
            outcomes_per_write=campaign.outcomes_per_write,
            lease_seconds=campaign.lease_seconds,
            id_range=shard.id_range,
            on_chunk=log_progress,
            stop=stop,
            max_messages_per_second=shard.max_messages_per_second,
            max_rejected=max_rejected,
        )

    try:
        stats = _send_off_the_main_thread(send, stop)
    except INTERRUPTS:
        _pause_for_terminated_run(context, campaign_store, campaign.id)
        raise
    except SendInterrupted as error:
        _release_if_reachable(context, campaign_store, campaign.id, campaign.lease_seconds)
        raise dg.Failure(
            description=f"{error}. Recipients without an outcome stay pending for a rerun.",
            metadata=_send_metadata(error.stats, sqs_queue.queue_url),
        ) from None
    except SettingsError as error:  # raised before anything was sent
        campaign_store.release(campaign.id, context.run_id)
        raise dg.Failure(description=str(error), allow_retries=False) from None
    except Exception:
        campaign_store.release(campaign.id, context.run_id)
        raise
    if stats.stopped == "rejected":
        _hold_back_for_rejections(context, campaign_store, campaign.id, stats, max_rejected)
        raise dg.Failure(
            description=f"campaign {campaign.id} held back: SQS refused {stats.rejected} "
            f"messages for good, more than CAMPAIGN_MAX_REJECTED ({max_rejected}): "
            f"{_top_codes(stats)}. Every outcome so far is recorded; the rest stay pending",
            metadata=_send_metadata(stats, sqs_queue.queue_url),
            allow_retries=False,
        )
    context.add_output_metadata(_send_metadata(stats, sqs_queue.queue_url))
    stopped = f" (stopped: campaign {stats.stopped})" if stats.stopped else ""
    context.log.info(
        f"Campaign {campaign.id}: {stats.queued} queued, {stats.failed} failed, "
        f"{stats.batches} batches in {stats.seconds:.1f}s ({stats.messages_per_second:.0f}/s)"
        f"{stopped}"
    )
    return stats


def _release_if_reachable(
    context: dg.OpExecutionContext, store: CampaignStore, campaign_id: str, lease_seconds: float
) -> None:
    """Give up the lease; when the database is what stopped the send, it runs out instead."""
    try:
        store.release(campaign_id, context.run_id)
    except sa.exc.SQLAlchemyError as error:
        context.log.warning(
            f"could not release campaign {campaign_id}'s lease ({database_reason(error)}); "
            f"it runs out within {lease_seconds:.0f} s"
        )


def _top_codes(stats: SendStats) -> str:
    return ", ".join(f"{code} {count}" for code, count in stats.rejected_by_code.most_common(3))


def _hold_back_for_rejections(
    context: dg.OpExecutionContext,
    campaign_store: CampaignStore,
    campaign_id: str,
    stats: SendStats,
    max_rejected: int,
) -> None:
    """Pause the campaign SQS keeps refusing, with the top codes as its last error."""
    reason = (
        f"SQS refused {stats.rejected} messages for good in run {context.run_id}, more than "
        f"CAMPAIGN_MAX_REJECTED ({max_rejected}): {_top_codes(stats)}"
    )
    # The campaign's counts moved with every outcome write; the other shards see the pause.
    campaign_store.hold_back(
        campaign_id, context.run_id, reason, f"rejection guard: run {context.run_id}"
    )


def _stop_description(campaign: Mapping[str, Any], status: str, pending: int) -> str:
    """Who stopped the campaign (`paused` or `cancelled`) and when, for metadata and tags."""
    actor = campaign.get(f"{status}_by") or "someone"
    moment = as_utc(campaign.get(f"{status}_at"))
    when = f" at {moment:%Y-%m-%d %H:%M:%S} UTC" if moment else ""
    now = "" if campaign.get("status") == status else f", {campaign.get('status')!r} since"
    return f"{status} by {actor}{when}{now}; {pending} recipients stay pending"


@dg.op
def complete_campaign(
    context: dg.OpExecutionContext,
    campaign: ClaimedCampaign,
    shard_stats: list[SendStats],
    campaign_store: CampaignStore,
) -> dict[str, int]:
    """Store the campaign's final counts and release it; fail if any recipient is still pending."""
    stats = merge_stats(shard_stats)
    _claim_for_reexecution(context, campaign_store, campaign)
    try:
        counts = campaign_store.finish(campaign.id, context.run_id)
    except TRANSIENT_DATABASE_ERRORS as error:
        raise dg.RetryRequested(max_retries=3, seconds_to_wait=2) from error
    # The campaign's totals by status, then what this run did (a resume counts only its part).
    metadata: dict[str, dg.MetadataValue] = {
        status: dg.MetadataValue.int(count) for status, count in counts.items()
    }
    metadata |= {
        "queued_this_run": dg.MetadataValue.int(stats.queued),
        "failed_this_run": dg.MetadataValue.int(stats.failed),
        "failed_by_reason": _reasons_table(stats),
        "resumed": dg.MetadataValue.bool(campaign.resumed),
        "this_run": dg.MetadataValue.md(
            f"{stats.queued} queued and {stats.failed} failed by {len(shard_stats)} send steps, "
            f"{stats.batches} batches, {stats.retried_entries} entries retried"
        ),
    }
    campaign_row = campaign_store.get_campaign(campaign.id) or {}
    stopped_by = campaign_row.get("status")
    if stopped_by not in STOPPED_STATUSES:
        stopped_by = stats.stopped
    if stopped_by in STOPPED_STATUSES:
        # Stopped by an operator: the run did what it was told, which is not a failure.
        description = _stop_description(campaign_row, str(stopped_by), counts["pending"])
        metadata["stopped"] = dg.MetadataValue.text(description)
        context.instance.add_run_tags(context.run_id, {STOPPED_TAG: description})
        context.log.info(f"Campaign {campaign.id} {description}")
    elif counts["pending"]:
        raise dg.Failure(
            description=f"{counts['pending']} recipients of campaign {campaign.id} are still "
            "pending (SQS never confirmed them); a rerun will send them.",
            metadata=metadata,
        )
    context.add_output_metadata(metadata)
    return counts
