"""The ops of `process_campaign_messages`, in the order they run."""

from campaign_pipeline.ops.process_campaign import (
    CampaignConfig,
    ClaimedCampaign,
    claim_campaign,
    complete_campaign,
    send_campaign_messages,
)

__all__ = [
    "CampaignConfig",
    "ClaimedCampaign",
    "claim_campaign",
    "complete_campaign",
    "send_campaign_messages",
]
