"""What the job's ops take and hand on: the claim's config, the claimed campaign, a shard."""

from dataclasses import dataclass

import dagster as dg
from pydantic import Field

from campaign_pipeline.payloads import CampaignMessage
from campaign_pipeline.store.records import IdRange


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
    # The preflight guard's bound, for the send step that counts the campaign exactly (None:
    # the claim counted a sample, or the guard is off, or the run resumes the campaign).
    preflight_max_invalid: float | None = None

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
