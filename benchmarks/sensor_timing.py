"""How long one evaluation of `asset_generated_campaigns_sensor` takes on a given campaign store.

The sensor runs every CAMPAIGN_PROCESSING_INTERVAL on the daemon; with a large `campaigns`
table its query must stay an index scan. Evaluated through `build_sensor_context`, like the tests,
once to warm up (connection pool, plan cache), then the median of the next evaluations. Prints
one JSON line: sensor_eval_ms, evaluations, run_requests.

    python benchmarks/sensor_timing.py --database-url URL [--evaluations 5]
"""

import argparse
import json
import statistics
import time

import dagster as dg

from campaign_pipeline.resources.campaign_store import CampaignStore
from campaign_pipeline.sensors import asset_generated_campaigns_sensor


def evaluate(context: dg.SensorEvaluationContext) -> tuple[float, int]:
    """One evaluation: its duration in milliseconds and how many runs it requested."""
    started = time.perf_counter()
    result = asset_generated_campaigns_sensor(context)
    elapsed_ms = (time.perf_counter() - started) * 1000
    run_requests = result.run_requests if isinstance(result, dg.SensorResult) else None
    return elapsed_ms, len(run_requests or [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--evaluations", type=int, default=5)
    args = parser.parse_args()
    store = CampaignStore(database_url=args.database_url)
    with dg.build_sensor_context(resources={"campaign_store": store}) as context:
        evaluate(context)
        timings = [evaluate(context) for _ in range(args.evaluations)]
    print(
        json.dumps(
            {
                "sensor_eval_ms": round(statistics.median(ms for ms, _ in timings), 2),
                "evaluations": args.evaluations,
                "run_requests": timings[-1][1],
            }
        )
    )


if __name__ == "__main__":
    main()
