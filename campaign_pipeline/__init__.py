"""campaign_pipeline: a Dagster code location that queues campaign messages on SQS."""
