"""The spec's HTTP API (`campaign-pipeline serve-api`): FastAPI on uvicorn, in front of Dagster.

`app.create_app` assembles it: `routes/` (one module per resource), `dependencies` (the
server's parts and the caller's token), `error_handlers`, `caches`, `middleware` (bounded
bodies, one log line per request), `models` (the OpenAPI document's bodies) and `tokens`.
"""
