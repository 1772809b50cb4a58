"""WhatsApp's template categories (`campaigns.category`), which decide what a skip applies to.

Suppressions of scope `marketing` and the frequency cap hold for marketing campaigns only; a
campaign that does not say is treated as marketing, the category WhatsApp bills and limits most.
"""

CATEGORIES = ("marketing", "utility", "authentication")
DEFAULT_CATEGORY = "marketing"
# The categories that are not marketing: a campaign with any other (or none) is marketing.
NOT_MARKETING = tuple(category for category in CATEGORIES if category != DEFAULT_CATEGORY)


def category_of(campaign_category: str | None) -> str:
    """The category a campaign is treated as: its own if known, else marketing.

    A misspelt category must not escape the suppressions that hold for marketing.
    """
    return campaign_category if campaign_category in CATEGORIES else DEFAULT_CATEGORY
