"""WhatsApp's template categories (`campaigns.category`), which decide what a skip applies to.

Suppressions of scope `marketing` and the frequency cap hold for marketing campaigns only; a
campaign that does not say is treated as marketing, the category WhatsApp bills and limits most.
"""

CATEGORIES = ("marketing", "utility", "authentication")
DEFAULT_CATEGORY = "marketing"


def category_of(campaign_category: str | None) -> str:
    """The category a campaign is treated as: its own, else marketing."""
    return campaign_category or DEFAULT_CATEGORY
