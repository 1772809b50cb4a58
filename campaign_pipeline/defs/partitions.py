"""One dynamic partition per campaign, so the UI lists campaigns with their runs."""

import dagster as dg

from campaign_pipeline.defs.tags import (
    CAMPAIGN_NAME_TAG,
    CAMPAIGN_PARTITIONS,
    PARTITION_SET_TAG,
    PARTITION_TAG,
    campaign_name_tag,
)

# One partition per campaign (its id), added by whoever launches its first run: Jobs ->
# process_campaign_messages -> Partitions then lists campaigns with their latest run.
campaign_partitions = dg.DynamicPartitionsDefinition(name=CAMPAIGN_PARTITIONS)


def file_run_under_campaign(context: dg.OpExecutionContext, campaign_id: str, name: str) -> None:
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
