"""Dagster resources: the campaign store and the SQS queue."""
