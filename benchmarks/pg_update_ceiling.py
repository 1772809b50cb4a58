"""How fast this machine's PostgreSQL can mark recipients sent at all, whatever the client does.

Every design that keeps a status per recipient in `campaign_audience` must update each row once;
this times that alone on the pipeline's own table and indexes: one set-based UPDATE of every row
(the fastest form there is), and windows of 1,000 through `unnest` arrays (what the pipeline does).

    .venv/bin/python benchmarks/pg_update_ceiling.py --recipients 200000
"""

import argparse
import time
import uuid

import psycopg
from database import seed, temporary_database

from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.store.records import Outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=200_000)
    args = parser.parse_args()
    with temporary_database() as url:
        seed(url, args.recipients)
        with psycopg.connect(url, autocommit=True) as connection:
            started = time.perf_counter()
            connection.execute(
                "UPDATE campaign_audience SET status = 'ready_to_send', sqs_message_id = id, "
                "updated_at = now()"
            )
            one_statement = args.recipients / (time.perf_counter() - started)
            connection.execute(
                "UPDATE campaign_audience SET status = 'pending', sqs_message_id = NULL"
            )
            connection.execute("VACUUM ANALYZE campaign_audience")
            ids = [row[0] for row in connection.execute("SELECT id FROM campaign_audience")]
        store = CampaignStore(database_url=url)
        windows = []
        for start in range(0, len(ids), 1_000):
            window = Outcomes()
            part = ids[start : start + 1_000]
            window.add_sent(part, [str(uuid.uuid4()) for _ in part])
            windows.append(window)
        started = time.perf_counter()
        for window in windows:  # the pipeline's own write, one connection
            store.audience.record_outcomes("no-campaign", "no-run", window, lease_seconds=60)
        windowed = args.recipients / (time.perf_counter() - started)
        store.engine.dispose()
    print(f"{args.recipients:,} recipients")
    print(f"one set-based UPDATE of every row:           {one_statement:,.0f} rows/s")
    print(f"record_outcomes, windows of 1,000, 1 writer: {windowed:,.0f} rows/s")


if __name__ == "__main__":
    main()
