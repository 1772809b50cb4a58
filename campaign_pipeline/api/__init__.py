"""The spec's HTTP API (`campaign-pipeline serve-api`): FastAPI on uvicorn, in front of Dagster."""
