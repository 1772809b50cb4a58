"""campaign_pipeline: a Dagster code location that queues campaign messages on SQS.

`campaign_pipeline.preview(campaign_id, limit=None)` returns a campaign's pending recipients
with the payloads a run would queue, as a pandas DataFrame (see `services.preview.preview`).
It is imported on first use, so `import campaign_pipeline` stays light.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from campaign_pipeline.services.preview import preview

__all__ = ["preview"]


def __getattr__(name: str) -> Any:
    if name == "preview":
        from campaign_pipeline.services.preview import preview

        return preview
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
