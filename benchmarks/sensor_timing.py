"""How long one evaluation of `asset_generated_campaigns_sensor` takes on a given campaign store.

The sensor runs every CAMPAIGN_PROCESSING_INTERVAL on the daemon; with a large `campaigns`
table its query must stay an index scan. Evaluated through `build_sensor_context`, like the tests,
once to warm up (connection pool, plan cache), then the median of the next evaluations.

On an existing store (benchmarks/compare.py does this) it prints one JSON line: sensor_eval_ms,
evaluations, run_requests.

    python benchmarks/sensor_timing.py --database-url URL [--evaluations 5]

With `--seed`, it seeds throwaway PostgreSQL databases itself (`database.seed_campaign_mix`:
campaigns only, schema from `CampaignStore.create_schema()`) and times four tables of the same
`--campaigns` campaigns:

- `due`: `--scheduled` of them `asset_generated` with `send_at` over the next days, `--due` due
  now, the rest finished, draft, paused, cancelled or failed (the sensor requests runs; it changes
  nothing in the database, so every evaluation sees the same rows);
- `none_due`: the same with nothing due (the due ones settled instead): the sensor skips, naming
  the next scheduled campaign, which costs its second query;
- `baseline`: the rows of `due` with no `send_at` at all (so the scheduled ones are due too);
- `baseline_idle`: no `send_at` and nothing in `asset_generated`: the skip before scheduling.

It prints one JSON line: each table's median (and fastest) evaluation, its run requests or skip
reason, an `EXPLAIN ANALYZE` summary of each query the sensor issued (nodes, indexes, execution
ms), and the ratios of `due` and `none_due` to the baselines (of medians, and of the fastest).

    python benchmarks/sensor_timing.py --seed [--campaigns 100000 --scheduled 10000 --due 20]
        [--evaluations 5]
"""

import argparse
import json
import statistics
import time
from collections.abc import Iterator
from typing import Any

import dagster as dg
import sqlalchemy as sa
from database import CampaignMix, seed_campaign_mix, temporary_database

from campaign_pipeline.defs.sensors import asset_generated_campaigns_sensor
from campaign_pipeline.resources.campaign_store import CampaignStore


def evaluate(context: dg.SensorEvaluationContext) -> tuple[float, int]:
    """One evaluation: its duration in milliseconds and how many runs it requested."""
    started = time.perf_counter()
    result = asset_generated_campaigns_sensor(context)
    elapsed_ms = (time.perf_counter() - started) * 1000
    run_requests = result.run_requests if isinstance(result, dg.SensorResult) else None
    return elapsed_ms, len(run_requests or [])


def sensor_queries(context: dg.SensorEvaluationContext) -> tuple[Any, list[tuple[str, Any]]]:
    """One evaluation's result and the SELECTs it sent PostgreSQL, as (SQL, parameters).

    Listens on every Engine (the context may hold its own copy of the resource and engine) and
    keeps PostgreSQL's: Dagster's ephemeral instance speaks to SQLite.
    """
    statements: list[tuple[str, Any]] = []

    def capture(
        connection: sa.Connection,
        _cursor: Any,
        statement: str,
        parameters: Any,
        _context: Any,
        _executemany: bool,
    ) -> None:
        if connection.dialect.name == "postgresql" and statement.lstrip().startswith("SELECT"):
            statements.append((statement, parameters))

    sa.event.listen(sa.Engine, "before_cursor_execute", capture)
    try:
        result = asset_generated_campaigns_sensor(context)
    finally:
        sa.event.remove(sa.Engine, "before_cursor_execute", capture)
    return result, statements


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


def explain(store: CampaignStore, statement: str, parameters: Any) -> dict[str, Any]:
    """`EXPLAIN (ANALYZE, BUFFERS)` of one statement: its nodes, indexes and execution time."""
    with store.engine.connect() as connection:
        plan = connection.exec_driver_sql(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, parameters
        ).scalar_one()[0]
    nodes = list(_plan_nodes(plan["Plan"]))
    return {
        "execution_ms": round(plan["Execution Time"], 3),
        "planning_ms": round(plan["Planning Time"], 3),
        "nodes": [
            node["Node Type"] + (f" using {node['Index Name']}" if "Index Name" in node else "")
            for node in nodes
        ],
        "seq_scan": any(node["Node Type"] == "Seq Scan" for node in nodes),
        "rows_removed_by_filter": sum(node.get("Rows Removed by Filter", 0) for node in nodes),
        "shared_buffers_hit": plan["Plan"].get("Shared Hit Blocks", 0),
    }


def time_store(store: CampaignStore, evaluations: int) -> dict[str, Any]:
    """Median and fastest evaluation on `store`, what the sensor returned, and its query plans."""
    with dg.build_sensor_context(resources={"campaign_store": store}) as context:
        result, statements = sensor_queries(context)  # also the warm-up
        timings = [evaluate(context)[0] for _ in range(evaluations)]
    outcome: dict[str, Any] = {
        "sensor_eval_ms": round(statistics.median(timings), 2),
        "fastest_ms": round(min(timings), 2),
    }
    if isinstance(result, dg.SensorResult):
        outcome["run_requests"] = len(result.run_requests or [])
    else:
        outcome["skip_reason"] = result.skip_message
    names = ["campaigns_to_process", "next_scheduled"]
    outcome["queries"] = {
        (names[i] if i < len(names) else f"query_{i}"): explain(store, *statement)
        for i, statement in enumerate(statements)
    }
    return outcome


def scheduled_benchmark(campaigns: int, scheduled: int, due: int, evaluations: int) -> None:
    """Time the four tables of the module docstring and print one JSON line."""
    tables = {
        "due": CampaignMix(campaigns, scheduled, due),
        "none_due": CampaignMix(campaigns, scheduled, 0),
        "baseline": CampaignMix(campaigns, scheduled, due, send_at=False),
        "baseline_idle": CampaignMix(campaigns, 0, 0, send_at=False),
    }
    cases = {}
    for name, mix in tables.items():
        with temporary_database() as database_url:
            seed_campaign_mix(database_url, mix)
            store = CampaignStore(database_url=database_url)
            try:
                cases[name] = time_store(store, evaluations)
            finally:
                store.engine.dispose()

    def ratio(case: str, baseline: str, key: str = "sensor_eval_ms") -> float:
        return round(cases[case][key] / cases[baseline][key], 2)

    print(
        json.dumps(
            {
                "campaigns": campaigns,
                "scheduled": scheduled,
                "due": due,
                "evaluations": evaluations,
                "cases": cases,
                "ratio_due_to_baseline": ratio("due", "baseline"),
                "ratio_none_due_to_baseline": ratio("none_due", "baseline"),
                "ratio_none_due_to_baseline_idle": ratio("none_due", "baseline_idle"),
                # The fastest evaluations, steadier than medians on a busy machine.
                "fastest_ratio_due_to_baseline": ratio("due", "baseline", "fastest_ms"),
                "fastest_ratio_none_due_to_baseline": ratio("none_due", "baseline", "fastest_ms"),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--database-url", help="time the sensor on this existing store")
    target.add_argument(
        "--seed", action="store_true", help="seed throwaway databases and compare four tables"
    )
    parser.add_argument("--campaigns", type=int, default=100_000, help="with --seed")
    parser.add_argument("--scheduled", type=int, default=10_000, help="with --seed")
    parser.add_argument("--due", type=int, default=20, help="with --seed")
    parser.add_argument("--evaluations", type=int, default=5)
    args = parser.parse_args()
    if args.seed:
        scheduled_benchmark(args.campaigns, args.scheduled, args.due, args.evaluations)
        return
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
