"""The job's name and the run tags that tie a run to its campaign, shared by every launcher.

Plain constants, no Dagster import: the CLI, the HTTP API and the GraphQL client name runs
with them too.
"""

JOB_NAME = "process_campaign_messages"
# One partition per campaign (its id): the UI's Partitions tab lists campaigns with their runs.
CAMPAIGN_PARTITIONS = "campaigns"
CAMPAIGN_ID_TAG = "campaign_id"
ORGANIZATION_ID_TAG = "organization_id"
CAMPAIGN_NAME_TAG = "campaign_name"
# Dagster's own tags that make a run one of a partition.
PARTITION_TAG = "dagster/partition"
PARTITION_SET_TAG = "dagster/partition_set"
# Why a run left its campaign alone (paused, cancelled, scheduled for later).
STOPPED_TAG = "campaign_pipeline/stopped"
RESUME_ATTEMPT_TAG = "campaign_pipeline/resume_attempt"
# Dagster caps tag values; a campaign's name is only a label.
MAX_TAG_CHARACTERS = 200


def campaign_name_tag(name: str) -> str:
    """The campaign's name as a run tag value (Dagster bounds tag values)."""
    return name[:MAX_TAG_CHARACTERS]


def campaign_tags(
    campaign_id: str, organization_id: str | None, name: str | None = None
) -> dict[str, str]:
    """Tags that find a campaign's runs in the UI (and limit them to one at a time)."""
    tags = {CAMPAIGN_ID_TAG: campaign_id}
    if organization_id:
        tags[ORGANIZATION_ID_TAG] = organization_id
    if name:
        tags[CAMPAIGN_NAME_TAG] = campaign_name_tag(name)
    return tags
