"""Everything Dagster: the job, its ops, partitions, tags, sensors, schedule, executor and IO.

A thin shell over the Dagster-free packages (`store`, `sending`, `services`). Nothing is
imported here, so `campaign_pipeline.defs.tags` stays importable without loading Dagster.
"""
