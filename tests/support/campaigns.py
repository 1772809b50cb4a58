"""Campaigns and recipients for tests, written through the store as a real writer would."""

from campaign_pipeline.resources.campaign_store import CampaignStore


def add_template_campaign(
    store: CampaignStore, status: str = "asset_generated", **fields: object
) -> str:
    """A `template` campaign (hello_world, en) of organization `org-1`; returns its id."""
    defaults = {"template_name": "hello_world", "template_language": "en"}
    return store.campaigns.add(
        organization_id="org-1",
        name="welcome",
        status=status,
        message_type="template",
        **(defaults | fields),
    )


def add_recipients(store: CampaignStore, campaign_id: str, count: int) -> None:
    """`count` pending recipients with valid, distinct phone numbers and a name."""
    store.campaigns.add_recipients(
        campaign_id, [{"phone_number": f"+1555{i:07d}", "name": f"R{i}"} for i in range(count)]
    )
