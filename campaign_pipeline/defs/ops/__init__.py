"""The ops of `process_campaign_messages`, in the order they run."""

from campaign_pipeline.defs.ops.config import CampaignConfig, CampaignShard, ClaimedCampaign
from campaign_pipeline.defs.ops.process_campaign import (
    claim_campaign,
    complete_campaign,
    plan_shards,
    send_campaign_messages,
)

__all__ = [
    "CampaignConfig",
    "CampaignShard",
    "ClaimedCampaign",
    "claim_campaign",
    "complete_campaign",
    "plan_shards",
    "send_campaign_messages",
]
