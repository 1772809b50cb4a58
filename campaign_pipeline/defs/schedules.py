"""Schedules: the SQS status check, off until someone turns it on in the UI."""

import dagster as dg

from campaign_pipeline.defs.jobs import check_sqs_status

sqs_status_schedule = dg.ScheduleDefinition(
    name="sqs_status_schedule",
    job=check_sqs_status,
    cron_schedule="*/5 * * * *",
    # Every five minutes is 288 runs a day: a choice for whoever watches the queue.
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Record the SQS queue's depth every five minutes (check_sqs_status).",
)
