"""`serve-api`: the spec's HTTP API on uvicorn, in front of the Dagster webserver."""

import argparse
import logging
import os
import sys

from campaign_pipeline.cli.common import (
    CliError,
    Commands,
    ParentParsers,
    display_database_url,
    err,
    sqlite_file,
)
from campaign_pipeline.store.engine import default_database_url

SERVE_API_DESCRIPTION = (
    "Serve the spec's HTTP API: POST /api/campaigns/{id}/process-messages and GET "
    "/api/campaigns/sqs-status, plus a campaign's status, preview, pause, resume and cancel, "
    "and /api/health; the OpenAPI document is at /api/openapi.json. Every endpoint but health "
    "wants `Authorization: Bearer <token>`: operator tokens from CAMPAIGN_API_TOKENS "
    "(comma-separated) or CAMPAIGN_API_TOKENS_FILE (one per line, or sha256:<hex>), read-only "
    "ones from CAMPAIGN_API_READ_TOKENS(_FILE). Runs are launched through the Dagster "
    "webserver at $DAGSTER_URL (default http://127.0.0.1:3000); campaigns are read from "
    "CAMPAIGN_DATABASE_URL; the queue is $AWS_SQS_QUEUE_URL. Serve it behind a TLS proxy."
)


def cmd_serve_api(args: argparse.Namespace) -> int:
    """Check the configuration, then serve until interrupted."""
    import uvicorn

    from campaign_pipeline.api.app import ApiSettings, create_app
    from campaign_pipeline.api.tokens import tokens_from_environment
    from campaign_pipeline.services.dagster_client import (
        DAGSTER_URL_VARIABLE,
        DEFAULT_DAGSTER_URL,
        DagsterWebserver,
    )

    tokens = tokens_from_environment()
    database_url = default_database_url()
    database_file = sqlite_file(database_url)
    if database_file is not None and not database_file.exists():
        raise CliError(
            f"the campaign database {display_database_url(database_url)} does not exist; "
            "run `campaign-pipeline init-db` first"
        )
    dagster_url = (
        args.dagster_url or os.environ.get(DAGSTER_URL_VARIABLE) or DEFAULT_DAGSTER_URL
    ).strip()
    shown_dagster = DagsterWebserver(dagster_url).shown_url
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for name in ("campaign_pipeline", "uvicorn"):
        logging.getLogger(name).setLevel(logging.INFO)
    app = create_app(ApiSettings(tokens, database_url, dagster_url))
    err(
        f"serving the campaign API on http://{args.host}:{args.port} ({len(tokens)} token"
        f"{'s' if len(tokens) > 1 else ''}; "
        f"campaigns in {display_database_url(database_url)}; Dagster at {shown_dagster})"
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        access_log=False,  # the application logs each request itself, without its query
        log_config=None,
        server_header=False,
        forwarded_allow_ips=args.forwarded_allow_ips,
        timeout_graceful_shutdown=10,
    )
    return 0


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, not {text!r}")
    return int(text)


def add_commands(commands: Commands, parents: ParentParsers) -> None:
    """Add `serve-api`."""
    serve = commands.add_parser(
        "serve-api",
        parents=[parents.common],
        help="serve the spec's HTTP API (process-messages, sqs-status, controls)",
        description=SERVE_API_DESCRIPTION,
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8080, help="port to listen on (8080)")
    serve.add_argument(
        "--dagster-url", help="the Dagster webserver (default $DAGSTER_URL or :3000)"
    )
    serve.add_argument(
        "--forwarded-allow-ips",
        default="127.0.0.1",
        help="proxies whose X-Forwarded-For/-Proto are trusted (default 127.0.0.1)",
    )
    serve.set_defaults(handler=cmd_serve_api)
