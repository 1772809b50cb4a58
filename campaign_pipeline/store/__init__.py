"""The campaign store, free of Dagster: one module per caller over SQLAlchemy Core.

`engine` (where the database is), `schema` (its tables), `records` (the value types),
`campaigns` (rows, seeding), `claims` (a run's claim and lease), `audience` (the pending stream
and outcome writes), `sweeps` (the sensors' queries), `control` (operators' commands), and
`database.CampaignDatabase`, which holds them over one engine.
"""
