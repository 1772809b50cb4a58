"""What duplicates, opt-outs and a frequency cap cost a send, against one without them.

Seeds, in a throwaway PostgreSQL database, two campaigns of N recipients (default 1,000,000)
with the same recipients (`dataset.recipient`, 1% invalid numbers): `plain`, of an organization
with no suppressions and no cap, and `skips`, of an organization with a suppression list of
`--suppressed` numbers (default 100,000; 10% of them the campaign's own), 1% of its recipients
given the number of another recipient, and a frequency cap (`--cap`, default 2/7d) under which
every number already had one marketing message from another campaign and every 100th two (so
each chunk's reservation updates a row per number, and 1% are capped). Then sends each,
alternating, `--repeats` times, with `ShardSend(...).run()` in this process (the op's chunk and
write window, the op's cap lookup first) to the null sink (everything but SQS) or to fauxqs on
loopback, and reports each round's `skips / plain` time: the cost of the skips is that ratio
minus one. Issue 19 allows under 15%. One JSON line:

    python benchmarks/skips_cost.py [--recipients 1000000] [--sink null|fauxqs] [--repeats 3]
"""

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from database import reset, seed, temporary_database
from pipeline_runner import null_batch_queue
from sqs_endpoints import FAKE_CREDENTIALS, REGION, fauxqs_server, fauxqs_version, fresh_queue

from campaign_pipeline.defs.ops.config import CampaignConfig
from campaign_pipeline.frequency_caps import FrequencyCap, parse_frequency_cap
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.resources.sqs_queue import SqsQueue
from campaign_pipeline.sending.frequency import cap_for_sending
from campaign_pipeline.sending.lease import Lease
from campaign_pipeline.sending.shard import ShardSend
from campaign_pipeline.sending.stats import SendStats

DEFAULTS = CampaignConfig(campaign_id="")
SKIPS_ORGANIZATION = "benchmark-skips"
DUPLICATE_EVERY = 100  # 1% of recipients take another recipient's number
OWN_SUPPRESSED_EVERY = 10  # of the suppression list, every tenth is a recipient's number


def add_skips_campaign(url: str, plain_id: str, suppressed: int) -> str:
    """A copy of `plain_id` for `SKIPS_ORGANIZATION`, 1% duplicates, and its suppressions."""
    skips_id = str(uuid.uuid4())
    with psycopg.connect(url) as connection:
        connection.execute(
            "INSERT INTO campaigns (id, organization_id, name, status, message_type, "
            "template_name, template_language, template_parameters, message_content, media_url, "
            "caption) SELECT %s, %s, name || ' (skips)', status, message_type, template_name, "
            "template_language, template_parameters, message_content, media_url, caption "
            "FROM campaigns WHERE id = %s",
            (skips_id, SKIPS_ORGANIZATION, plain_id),
        )
        # Same recipients, new ids (md5 of the old one as a UUID).
        connection.execute(
            "INSERT INTO campaign_audience (id, campaign_id, phone_number, name, attributes) "
            "SELECT md5(id)::uuid::text, %s, phone_number, name, attributes "
            "FROM campaign_audience WHERE campaign_id = %s",
            (skips_id, plain_id),
        )
        # Every 100th recipient (by id) takes the number of the recipient before it.
        connection.execute(
            "WITH numbered AS (SELECT id, phone_number, lag(phone_number) OVER (ORDER BY id) "
            "AS previous, row_number() OVER (ORDER BY id) AS n FROM campaign_audience "
            "WHERE campaign_id = %s) UPDATE campaign_audience AS a SET phone_number = "
            "numbered.previous FROM numbered WHERE a.id = numbered.id AND numbered.n %% %s = 0",
            (skips_id, DUPLICATE_EVERY),
        )
        own = suppressed // OWN_SUPPRESSED_EVERY
        connection.execute(
            "INSERT INTO suppressions (organization_id, phone_number, scope, reason, source) "
            "SELECT %s, phone_number, 'marketing', 'benchmark', 'benchmark' FROM "
            "(SELECT DISTINCT phone_number FROM campaign_audience WHERE campaign_id = %s "
            "AND phone_number LIKE '+%%' ORDER BY phone_number LIMIT %s) AS own "
            "UNION ALL SELECT %s, '+1999' || lpad(n::text, 7, '0'), 'all', 'benchmark', "
            "'benchmark' FROM generate_series(1, %s) AS n",
            (SKIPS_ORGANIZATION, skips_id, own, SKIPS_ORGANIZATION, suppressed - own),
        )
        # One marketing message from an earlier campaign an hour ago to every valid number, two
        # (the second two hours ago) to every 100th.
        connection.execute(
            "INSERT INTO marketing_sends (organization_id, phone_number, sent_at, campaign_keys) "
            "SELECT %s, phone_number, CASE WHEN n %% 100 = 0 THEN "
            "ARRAY[now() - interval '2 hours', now() - interval '1 hour'] "
            "ELSE ARRAY[now() - interval '1 hour'] END, CASE WHEN n %% 100 = 0 THEN "
            "ARRAY[hashtextextended('earlier-2', 0), hashtextextended('earlier-1', 0)] "
            "ELSE ARRAY[hashtextextended('earlier-1', 0)] END "
            "FROM (SELECT phone_number, row_number() OVER (ORDER BY phone_number) AS n FROM "
            "(SELECT DISTINCT phone_number FROM campaign_audience WHERE campaign_id = %s "
            "AND phone_number LIKE '+%%') AS valid) AS numbered",
            (SKIPS_ORGANIZATION, skips_id),
        )
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE")
    return skips_id


def forget_reservations(url: str, campaign_id: str) -> None:
    """Take the campaign's earlier entries out: each round reserves as a new campaign does."""
    with psycopg.connect(url) as connection:
        connection.execute(
            "UPDATE marketing_sends SET sent_at = ARRAY(SELECT e.t FROM unnest(sent_at, "
            "campaign_keys) WITH ORDINALITY AS e(t, k, i) WHERE e.k <> hashtextextended(%s, 0) "
            "ORDER BY e.i), campaign_keys = array_remove(campaign_keys, hashtextextended(%s, 0)) "
            "WHERE organization_id = %s AND hashtextextended(%s, 0) = ANY(campaign_keys)",
            (campaign_id, campaign_id, SKIPS_ORGANIZATION, campaign_id),
        )
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE marketing_sends")


def send(
    store: CampaignStore,
    campaign_id: str,
    run_id: str,
    queue: object,
    default_cap: FrequencyCap | None,
) -> SendStats:
    claim = store.claims.claim(campaign_id, run_id, DEFAULTS.lease_seconds)
    # As the send op does: the organization's cap, its history counted first.
    cap = cap_for_sending(store.organizations, store.marketing_sends, claim.message, default_cap)
    return ShardSend(
        claim.message,
        Lease(store.claims, campaign_id, run_id, DEFAULTS.lease_seconds),
        store.audience,
        queue,  # type: ignore[arg-type]
        store.suppressions,
        marketing_sends=store.marketing_sends,
        frequency_cap=cap,
        recipients_per_chunk=DEFAULTS.recipients_per_chunk,
        outcomes_per_write=DEFAULTS.outcomes_per_write,
    ).run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--suppressed", type=int, default=100_000)
    parser.add_argument("--sink", choices=("null", "fauxqs"), default="null")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cap", type=parse_frequency_cap, default=parse_frequency_cap("2/7d"))
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {"plain": [], "skips": []}
    failed: dict[str, dict[str, int]] = {}
    with temporary_database() as url, contextlib.ExitStack() as stack:
        (plain_id,) = seed(url, args.recipients, campaigns=1).campaign_ids
        campaigns = {"plain": plain_id, "skips": add_skips_campaign(url, plain_id, args.suppressed)}
        store = CampaignStore(database_url=url)
        endpoint = stack.enter_context(fauxqs_server()) if args.sink == "fauxqs" else None
        os.environ.update(FAKE_CREDENTIALS)
        for repeat in range(args.repeats):
            for kind, campaign_id in campaigns.items():
                reset(url, [campaign_id])
                if kind == "skips":
                    forget_reservations(url, campaign_id)
                if endpoint is None:
                    queue: object = null_batch_queue()
                else:
                    queue_url = stack.enter_context(fresh_queue(endpoint))
                    queue = SqsQueue(
                        queue_url=queue_url, region_name=REGION, endpoint_url=endpoint
                    ).batch_queue()
                started = time.perf_counter()
                cap = args.cap if kind == "skips" else None
                stats = send(store, campaign_id, f"{kind}-{repeat}", queue, cap)
                seconds[kind].append(time.perf_counter() - started)
                failed[kind] = dict(stats.failed_by_code)
        store.engine.dispose()
    ratios = [s / p for s, p in zip(seconds["skips"], seconds["plain"], strict=True)]
    print(
        json.dumps(
            {
                "recipients": args.recipients,
                "suppressed": args.suppressed,
                "cap": args.cap.text,
                "sink": args.sink if endpoint is None else f"fauxqs {fauxqs_version()}",
                "repeats": args.repeats,
                "failed_by_code": failed,
                "plain_s": [round(s, 2) for s in seconds["plain"]],
                "skips_s": [round(s, 2) for s in seconds["skips"]],
                "skips_to_plain": [round(r, 3) for r in ratios],
                "median_cost": round(statistics.median(ratios) - 1, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
