"""What the preflight guard costs next to the send it guards, on the null sink.

Seeds one campaign of N recipients (default 1,000,000; 1% invalid) in a throwaway PostgreSQL
database, then, in this process: the preflight as the claim runs it (every recipient up to
`EXACT_UP_TO`, a spread sample above), the exact count of every recipient for comparison, and
the send itself (`ShardSend(...).run()` to a sink that accepts everything, so the send is
everything but SQS: reads, payloads, outcome writes). The issue's bound is a preflight of at
most 10% of the send. Prints one JSON line:

    python benchmarks/preflight_cost.py [--recipients 1000000] [--repeats 2]
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from database import reset, seed, temporary_database
from pipeline_runner import null_batch_queue

from campaign_pipeline.defs.ops.config import CampaignConfig
from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.sending.guards import EXACT_UP_TO, SAMPLE_SLICES, count_invalid
from campaign_pipeline.sending.lease import Lease
from campaign_pipeline.sending.shard import ShardSend

DEFAULTS = CampaignConfig(campaign_id="")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    preflights: list[float] = []
    exacts: list[float] = []
    sends: list[float] = []
    with temporary_database() as url:
        (campaign_id,) = seed(url, args.recipients, campaigns=1).campaign_ids
        store = CampaignStore(database_url=url)
        sink = null_batch_queue()
        for repeat in range(args.repeats):
            reset(url, [campaign_id])
            claim = store.claims.claim(campaign_id, f"run-{repeat}", DEFAULTS.lease_seconds)
            pending = claim.counts["pending"]
            started = time.perf_counter()
            chunks, sampled = store.audience.preflight_chunks(
                campaign_id, pending, EXACT_UP_TO, SAMPLE_SLICES
            )
            counted = count_invalid(
                claim.message, chunks, sink.max_message_bytes(), pending if sampled else None
            )
            preflights.append(time.perf_counter() - started)
            started = time.perf_counter()
            exact = count_invalid(
                claim.message,
                store.audience.pending_chunks(campaign_id, DEFAULTS.recipients_per_chunk),
                sink.max_message_bytes(),
            )
            exacts.append(time.perf_counter() - started)
            started = time.perf_counter()
            stats = ShardSend(
                claim.message,
                Lease(store.claims, campaign_id, f"run-{repeat}", DEFAULTS.lease_seconds),
                store.audience,
                sink,
                store.suppressions,
                recipients_per_chunk=DEFAULTS.recipients_per_chunk,
                outcomes_per_write=DEFAULTS.outcomes_per_write,
            ).run()
            sends.append(time.perf_counter() - started)
            assert exact.recipients == stats.recipients, (exact, stats)
            assert exact.invalid == stats.failed, (exact, stats)
        store.engine.dispose()
    preflight_s, send_s = statistics.median(preflights), statistics.median(sends)
    print(
        json.dumps(
            {
                "recipients": args.recipients,
                "repeats": args.repeats,
                "invalid_fraction_exact": round(exact.fraction, 4),
                "invalid_fraction_preflight": round(counted.fraction, 4),
                "preflight_sampled": counted.sampled_from is not None,
                "preflight_recipients_read": counted.recipients,
                "preflight_s": round(preflight_s, 2),
                "exact_count_s": round(statistics.median(exacts), 2),
                "send_null_sink_s": round(send_s, 2),
                "preflight_to_send": round(preflight_s / send_s, 3),
                "preflights_s": [round(s, 2) for s in preflights],
                "sends_s": [round(s, 2) for s in sends],
            }
        )
    )


if __name__ == "__main__":
    main()
