"""The pipeline against the origin service's design and against boto3's ceiling, in one command.

Numbers from separate commands drift with the data, the endpoint and the machine's mood; this runs
every contender on the same seeded PostgreSQL database, the same SQS endpoints and the same
machine, one fresh child process per measurement (so peak RSS and CPU are its own), and resets
every status before each one. Contenders:

- `pipeline`: the real Dagster job (benchmarks/pipeline_runner.py) in one process, and, on one
  campaign holding all N recipients in two shards, 1 process against 2 and against 1 and 2
  Celery workers over RabbitMQ (`CAMPAIGN_EXECUTOR=celery`), with the time to the first
  recorded message and the wall time each shard adds over `in_process`;
- `seed_baseline`: the origin service's design (benchmarks/baselines.py);
- `raw_ceiling`: boto3 alone with pre-built bodies, at its best thread count.

Sinks: `null` (no SQS), `fauxqs` on loopback, and fauxqs behind a latency proxy (`fauxqs+20ms`);
above `--all-sinks-up-to` recipients (100k) only the null sink, since the emulator runs take
minutes each there and the ratios are taken at the largest N measured on every sink. Writes
benchmarks/results/latest.json and a markdown report next to it.

    .venv/bin/python benchmarks/compare.py --recipients 100000 1000000 [--skip-baseline-above N]
    .venv/bin/python benchmarks/compare.py --quick     # CI smoke: 10k, no thread sweep or sensor
    .venv/bin/python benchmarks/compare.py --recipients 100000 1000000 --scale-out-only
"""

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from database import (
    SeededCampaigns,
    add_sensor_campaigns,
    delete_sensor_campaigns,
    reset,
    seed,
    server_version,
    temporary_database,
)
from dataset import split_evenly
from sqs_endpoints import (
    FAKE_CREDENTIALS,
    REGION,
    fauxqs_server,
    fauxqs_version,
    fresh_queue,
    latency_proxy,
    queue_depth,
)

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"
PIPELINE_RUNNER = BENCHMARKS / "pipeline_runner.py"
BASELINES = BENCHMARKS / "baselines.py"
SENSOR_TIMING = BENCHMARKS / "sensor_timing.py"

BASELINE_SAMPLE = 20_000  # recipients the seed baseline handles when N is too large to wait for
SWEEP_THREADS = (1, 4, 8, 16, 32)
SWEEP_MESSAGES = 20_000
SWEEP_SECONDS = 8.0  # per thread count: enough batches for a steady rate, even at 1 thread
QUICK_THREADS = 8
RAW_CEILING_CAP = 200_000  # the raw ceiling's rate is steady long before a million messages
SENSOR_WAITING = 20
CHILD_TIMEOUT_S = 3_600


@dataclass(frozen=True)
class Options:
    """What to measure, from the command line."""

    recipients: tuple[int, ...]
    skip_baseline_above: int
    all_sinks_up_to: int
    latency_ms: float
    sensor_campaigns: int
    quick: bool
    sensor_only: bool
    scale_out_only: bool = False

    @property
    def slow_sink(self) -> str:
        """The name of the sink behind the latency proxy, e.g. `fauxqs+20ms`."""
        return f"fauxqs+{self.latency_ms:g}ms"


@dataclass(frozen=True)
class Bench:
    """One seeded database and the endpoints every measurement of it uses."""

    database_url: str
    seeded: SeededCampaigns
    endpoints: dict[str, str | None]  # sink name -> endpoint URL (None: the null sink)
    options: Options

    @property
    def loopback(self) -> str:
        """The fauxqs endpoint itself: queues are created and inspected here, not via the proxy."""
        endpoint = self.endpoints["fauxqs"]
        assert endpoint is not None
        return endpoint


def _child_env(**extra: str) -> dict[str, str]:
    env = os.environ | FAKE_CREDENTIALS | {"AWS_DEFAULT_REGION": REGION} | extra
    # Nothing from a real AWS setup may leak into a measurement.
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS"):
        env.pop(name, None)
    return env


def run_child(script: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a measurement script in a fresh Python process; returns its last JSON line.

    Linux carries a process's peak RSS (`ru_maxrss`) over fork and exec, so a child started from
    here would report at least this process's RSS. The shell in between forks it (the `; exit`
    stops it from exec'ing in place), so the child starts counting from the shell's few MB.
    """
    argv = ["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, str(script), *args]
    # Its own process group, so the child and anything it started can be stopped together.
    process = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env or _child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=CHILD_TIMEOUT_S)
    finally:
        if process.poll() is None or process.returncode != 0:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    if process.returncode != 0:
        raise RuntimeError(
            f"{script.name} {shlex.join(args)} exited with {process.returncode}:\n{stderr[-4000:]}"
        )
    return json.loads(stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def sink_queue(bench: Bench, sink: str) -> Iterator[tuple[str | None, str | None]]:
    """(endpoint, queue URL) for one measurement on `sink`: a fresh queue, or (None, None)."""
    endpoint = bench.endpoints[sink]
    if endpoint is None:
        yield None, None
        return
    with fresh_queue(bench.loopback) as queue_url:
        yield endpoint, queue_url


def record(
    name: str, sink: str, recipients: int, result: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    """A run as results/latest.json stores it; the rate is over what was actually handled."""
    handled = extra.get("sampled", recipients)
    run = {
        "name": name,
        "sink": sink,
        "recipients": recipients,
        "recipients_per_s": round(handled / result["wall_s"], 1),
        "wall_s": round(result["wall_s"], 2),
        "peak_rss_mb": result["peak_rss_mb"],
        "cpu_s": result["cpu_s"],
        "queued": result["queued"],
        "failed": result["failed"],
        **({"first_message_s": result["first_message_s"]} if "first_message_s" in result else {}),
        **extra,
    }
    print(f"  {describe(run)}: {run['recipients_per_s']:,.0f} recipients/s", flush=True)
    return run


def check_counts(what: str, result: dict[str, Any], expected: int) -> None:
    """Fail loudly unless every recipient ended queued or failed."""
    if result["queued"] + result["failed"] != result["recipients"]:
        raise RuntimeError(
            f"{what}: queued {result['queued']} + failed {result['failed']} "
            f"!= recipients {result['recipients']}"
        )
    if result["recipients"] != expected:
        raise RuntimeError(f"{what}: handled {result['recipients']} recipients, not {expected}")


def check_queue(bench: Bench, what: str, queue_url: str | None, queued: int) -> int | None:
    """Messages that landed on the queue; warns when they are not what was reported queued."""
    if queue_url is None:
        return None
    depth = queue_depth(bench.loopback, queue_url)
    if depth != queued:
        print(f"  WARNING {what}: the queue holds {depth} messages, {queued} reported queued")
    return depth


def measure_pipeline(
    bench: Bench,
    sink: str,
    processes: int = 1,
    shard: int | None = None,
    campaigns: int | None = None,
    celery_workers: int = 0,
) -> dict[str, Any]:
    """The real job over the first `campaigns` campaigns (default: all), one run each.

    With `celery_workers`, under the Celery executor on that many workers (`processes` shards
    at once).
    """
    reset(bench.database_url, bench.seeded.campaign_ids)
    campaigns = campaigns or len(bench.seeded.campaign_ids)
    expected = sum(bench.seeded.sizes[:campaigns])
    invalid = sum(bench.seeded.invalid[:campaigns])
    args = ["--database-url", bench.database_url, "--processes", str(processes)]
    args += ["--campaign-ids", ",".join(bench.seeded.campaign_ids[:campaigns])]
    if shard is not None:
        args += ["--recipients-per-shard", str(shard)]
    what = f"pipeline on {sink}, {processes} process(es)"
    env = None
    if celery_workers:
        args += ["--celery-workers", str(celery_workers)]
        what = f"pipeline on {sink}, {celery_workers} Celery worker(s)"
        env = _child_env(CAMPAIGN_EXECUTOR="celery")
    with sink_queue(bench, sink) as (endpoint, queue_url):
        if endpoint is None:
            args += ["--sink", "null"]
        else:
            args += ["--sink", "sqs", "--endpoint", endpoint, "--queue-url", str(queue_url)]
        result = run_child(PIPELINE_RUNNER, *args, env=env)
        check_counts(what, result, expected)
        depth = check_queue(bench, what, queue_url, result["queued"])
    if result["failed"] != invalid:
        print(f"  WARNING {what}: {result['failed']} failed, {invalid} seeded invalid")
    # This process plus its largest child (a step process, with 2 processes), as in the others.
    result["peak_rss_mb"] = result["peak_rss_sum_mb"]
    extra: dict[str, Any] = {"processes": processes}
    if celery_workers:
        extra = {"celery_workers": celery_workers}
    if shard is not None:
        extra["recipients_per_shard"] = shard
    if campaigns < len(bench.seeded.campaign_ids):
        extra |= {"campaigns": campaigns, "sampled": expected}
    elif campaigns == 1:
        extra["campaigns"] = 1
    if depth is not None:
        extra["queue_depth"] = depth
    return record("pipeline", sink, bench.seeded.recipients, result, **extra)


def measure_seed_baseline(bench: Bench, sink: str) -> dict[str, Any]:
    """The origin service's design; on a sample of each campaign when N is large."""
    reset(bench.database_url, bench.seeded.campaign_ids)
    sampled = bench.seeded.recipients > bench.options.skip_baseline_above
    campaigns = len(bench.seeded.campaign_ids)
    limits = split_evenly(BASELINE_SAMPLE, campaigns) if sampled else [0] * campaigns
    expected = BASELINE_SAMPLE if sampled else bench.seeded.recipients
    args = ["seed-baseline", "--database-url", bench.database_url]
    args += ["--campaign-ids", ",".join(bench.seeded.campaign_ids)]
    args += ["--limits", ",".join(map(str, limits))]
    what = f"seed_baseline on {sink}"
    with sink_queue(bench, sink) as (endpoint, queue_url):
        if endpoint is not None:
            args += ["--endpoint", endpoint, "--queue-url", str(queue_url)]
        result = run_child(BASELINES, *args)
        check_counts(what, result, expected)
        depth = check_queue(bench, what, queue_url, result["queued"])
    extra: dict[str, Any] = {"sampled": expected} if sampled else {}
    if depth is not None:
        extra["queue_depth"] = depth
    return record("seed_baseline", sink, bench.seeded.recipients, result, **extra)


def _raw_ceiling_once(
    bench: Bench, sink: str, messages: int, threads: int, max_seconds: float | None = None
) -> dict[str, Any]:
    with sink_queue(bench, sink) as (endpoint, queue_url):
        args = ["raw-ceiling", "--endpoint", str(endpoint), "--queue-url", str(queue_url)]
        args += ["--messages", str(messages), "--threads", str(threads)]
        if max_seconds is not None:
            args += ["--max-seconds", str(max_seconds)]
        result = run_child(BASELINES, *args)
        what = f"raw_ceiling on {sink}, {threads} threads"
        if max_seconds is None:
            check_counts(what, result, messages)
        result["queue_depth"] = check_queue(bench, what, queue_url, result["queued"])
    return result


def thread_sweep(bench: Bench, sink: str) -> list[dict[str, Any]]:
    """The raw ceiling's rate per thread count, on a time-capped sample."""
    sweep = []
    for threads in SWEEP_THREADS:
        messages = min(SWEEP_MESSAGES, bench.seeded.recipients)
        result = _raw_ceiling_once(bench, sink, messages, threads, SWEEP_SECONDS)
        rate = round(result["recipients"] / result["wall_s"], 1)
        print(f"    {threads} threads: {rate:,.0f} messages/s", flush=True)
        sweep.append({"threads": threads, "recipients_per_s": rate})
    return sweep


def measure_raw_ceiling(bench: Bench, sink: str) -> dict[str, Any]:
    """boto3 alone at its best thread count, over N messages (at most RAW_CEILING_CAP)."""
    sweep = [] if bench.options.quick else thread_sweep(bench, sink)
    threads = (
        max(sweep, key=lambda point: point["recipients_per_s"])["threads"]
        if sweep
        else QUICK_THREADS
    )
    messages = min(bench.seeded.recipients, RAW_CEILING_CAP)
    result = _raw_ceiling_once(bench, sink, messages, threads)
    extra: dict[str, Any] = {"threads": threads, "queue_depth": result["queue_depth"]}
    extra["payload_bytes_mean"] = result["payload_bytes_mean"]
    if messages < bench.seeded.recipients:
        extra["sampled"] = messages
    if sweep:
        extra["thread_sweep"] = sweep
    return record("raw_ceiling", sink, bench.seeded.recipients, result, **extra)


def measure_all(bench: Bench) -> list[dict[str, Any]]:
    """Every contender on every sink, for one seeded database."""
    sinks = list(bench.endpoints)
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    for sink in sinks:
        steps.append((f"pipeline, {sink}", partial(measure_pipeline, bench, sink)))
    for sink in sinks:
        steps.append((f"seed_baseline, {sink}", partial(measure_seed_baseline, bench, sink)))
    for sink in sinks[1:]:
        steps.append((f"raw_ceiling, {sink}", partial(measure_raw_ceiling, bench, sink)))
    runs = []
    for label, measure in steps:
        print(f"{label} ({bench.seeded.recipients:,} recipients)", flush=True)
        runs.append(measure())
    return runs


def measure_scale_out(bench: Bench) -> list[dict[str, Any]]:
    """One campaign of N recipients in two shards: 1 process, 2, 1 and 2 Celery workers.

    Every step is a process of its own under the multiprocess executor, and a task on a worker
    under Celery, so the comparison is made on one large campaign, where the shards are worth
    their start-up. A Celery run's `overhead_per_shard_s` is the wall time it took beyond the
    `in_process` run's, over the shards.
    """
    shard = math.ceil(bench.seeded.recipients / 2)
    shards = math.ceil(bench.seeded.recipients / shard)
    runs = []
    for sink in ("null", "fauxqs"):
        if sink not in bench.endpoints:
            continue
        for processes, workers in ((1, 0), (2, 0), (1, 1), (2, 2)):
            how = f"{workers} Celery worker(s)" if workers else f"{processes} process(es)"
            print(
                f"pipeline, {sink}, one campaign of {bench.seeded.recipients:,}, {how}, "
                f"{shard:,} recipients per shard",
                flush=True,
            )
            run = measure_pipeline(bench, sink, processes, shard, celery_workers=workers)
            if workers:
                local = runs[-2] if workers == 1 else runs[-3]
                run["overhead_per_shard_s"] = round((run["wall_s"] - local["wall_s"]) / shards, 2)
            runs.append(run)
    return runs


def measure_sensor(database_url: str, campaigns: int) -> float:
    """Median sensor evaluation with `campaigns` extra campaigns in the table, then removes them."""
    print(f"sensor timing ({campaigns:,} extra campaigns)", flush=True)
    add_sensor_campaigns(database_url, campaigns, SENSOR_WAITING)
    try:
        result = run_child(SENSOR_TIMING, "--database-url", database_url)
    finally:
        delete_sensor_campaigns(database_url)
    print(f"  sensor_eval_ms: {result['sensor_eval_ms']} ({result['run_requests']} run requests)")
    return result["sensor_eval_ms"]


def _find(
    runs: Sequence[dict[str, Any]], recipients: int, name: str, sink: str, **keys: Any
) -> dict[str, Any] | None:
    for run in runs:
        if (run["recipients"], run["name"], run["sink"]) == (recipients, name, sink) and all(
            run.get(key) == value for key, value in keys.items()
        ):
            return run
    return None


def _ratio(numerator: dict[str, Any] | None, denominator: dict[str, Any] | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator["recipients_per_s"] / denominator["recipients_per_s"], 3)


def ratios(runs: Sequence[dict[str, Any]], recipients: int, slow: str) -> dict[str, float | None]:
    """How the pipeline compares, for the runs with `recipients` recipients."""

    def find(name: str, sink: str, **keys: Any) -> dict[str, Any] | None:
        return _find(runs, recipients, name, sink, **keys)

    # The plain pipeline runs have no shard size of their own.
    pipeline_slow = find("pipeline", slow, processes=1, recipients_per_shard=None)
    pipeline_loopback = find("pipeline", "fauxqs", processes=1, recipients_per_shard=None)
    milliseconds = slow.removeprefix("fauxqs+")
    found = {
        f"pipeline_vs_seed_baseline_{milliseconds}": _ratio(
            pipeline_slow, find("seed_baseline", slow)
        ),
        f"pipeline_vs_raw_ceiling_{milliseconds}": _ratio(pipeline_slow, find("raw_ceiling", slow)),
        "pipeline_vs_raw_ceiling_loopback": _ratio(
            pipeline_loopback, find("raw_ceiling", "fauxqs")
        ),
    }
    for sink in ("null", "fauxqs"):
        one = find("pipeline", sink, processes=1, campaigns=1)
        two = find("pipeline", sink, processes=2, campaigns=1)
        if one and two:
            found[f"pipeline_2_vs_1_processes_{sink}"] = _ratio(two, one)
    return found


def describe(run: dict[str, Any]) -> str:
    """What sets a run apart from the others of its name and sink."""
    parts = [f"{run['name']} on {run['sink']}"]
    if "processes" in run:
        parts.append(f"{run['processes']} process" + ("es" if run["processes"] > 1 else ""))
    if "celery_workers" in run:
        parts.append(f"{run['celery_workers']} Celery worker" + "s" * (run["celery_workers"] > 1))
    if "recipients_per_shard" in run:
        parts.append(f"{run['recipients_per_shard']:,} per shard")
    if "campaigns" in run:
        parts.append(f"{run['campaigns']} campaign(s)")
    if "threads" in run:
        parts.append(f"{run['threads']} threads")
    if "sampled" in run:
        parts.append(f"sampled {run['sampled']:,}")
    return ", ".join(parts)


def runs_table(runs: Sequence[dict[str, Any]]) -> str:
    """The runs as a markdown table (readable in a terminal too)."""
    lines = [
        "| name | sink | detail | recipients | recipients/s | wall s | peak RSS MB | CPU s "
        "| first message s | overhead/shard s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        detail = describe(run).split(", ", 1)[1] if ", " in describe(run) else ""
        first = run.get("first_message_s")
        overhead = run.get("overhead_per_shard_s")
        lines.append(
            f"| {run['name']} | {run['sink']} | {detail} | {run['recipients']:,} "
            f"| {run['recipients_per_s']:,.0f} | {run['wall_s']:,.1f} | {run['peak_rss_mb']:,} "
            f"| {run['cpu_s']:,.1f} | {'' if first is None else f'{first:.2f}'} "
            f"| {'' if overhead is None else f'{overhead:.2f}'} |"
        )
    return "\n".join(lines)


def ratios_text(ratios_by_recipients: dict[int, dict[str, float | None]]) -> str:
    """The ratios as markdown bullets, per N."""
    lines = []
    for recipients, values in ratios_by_recipients.items():
        lines.append(f"{recipients:,} recipients:")
        for key, value in values.items():
            shown = "n/a" if value is None else f"{value:.2f}x"
            lines.append(f"- `{key}`: {shown}")
        lines.append("")
    return "\n".join(lines).strip()


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gb() -> float | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    return None


def _node_version() -> str:
    completed = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
    return completed.stdout.strip() or "unknown"


def machine_info(postgres: str) -> dict[str, Any]:
    """Where the numbers come from."""
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": _memory_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgres": postgres,
        "fauxqs": fauxqs_version(),
        "node": _node_version(),
        **{
            package: importlib.metadata.version(package)
            for package in ("dagster", "boto3", "polars", "psycopg")
        },
    }


def benchmark(options: Options) -> dict[str, Any]:
    """Every measurement for every N; returns the results document without its date."""
    runs: list[dict[str, Any]] = []
    sensor_ms: float | None = None
    postgres = "unknown"
    with contextlib.ExitStack() as stack:
        fauxqs = stack.enter_context(fauxqs_server())
        slow = stack.enter_context(latency_proxy(fauxqs, options.latency_ms))
        endpoints = {"null": None, "fauxqs": fauxqs, options.slow_sink: slow}
        for recipients in options.recipients:
            sinks = endpoints if recipients <= options.all_sinks_up_to else {"null": None}
            with temporary_database() as database_url:
                postgres = server_version(database_url)
                if not options.scale_out_only:
                    started = time.perf_counter()
                    seeded = seed(database_url, recipients)
                    elapsed = time.perf_counter() - started
                    print(f"seeded {recipients:,} recipients in 6 campaigns in {elapsed:.1f} s")
                    runs += measure_all(Bench(database_url, seeded, sinks, options))
                    if recipients == options.recipients[-1] and not options.quick:
                        sensor_ms = measure_sensor(database_url, options.sensor_campaigns)
            with temporary_database() as database_url:
                seeded = seed(database_url, recipients, campaigns=1)
                print(f"seeded {recipients:,} recipients in one campaign")
                runs += measure_scale_out(Bench(database_url, seeded, sinks, options))
    by_recipients = {n: ratios(runs, n, options.slow_sink) for n in options.recipients}
    # The headline ratios come from the largest N that every sink measured.
    headline = max(n for n in options.recipients if n <= options.all_sinks_up_to)
    document: dict[str, Any] = {
        "machine": machine_info(postgres),
        "runs": runs,
        "ratios": by_recipients[headline],
        "sensor_eval_ms": sensor_ms,
    }
    if len(options.recipients) > 1:
        document["ratios_by_recipients"] = by_recipients
    return document


def sensor_only(options: Options) -> None:
    """Only the sensor timing, on a database seeded for the largest N; writes no results."""
    with temporary_database() as database_url:
        seed(database_url, options.recipients[-1])
        print(
            json.dumps({"sensor_eval_ms": measure_sensor(database_url, options.sensor_campaigns)})
        )


def write_results(document: dict[str, Any], options: Options) -> Path:
    """results/latest.json and the dated markdown report; returns the report's path."""
    RESULTS.mkdir(exist_ok=True)
    if not options.scale_out_only:
        (RESULTS / "latest.json").write_text(json.dumps(document, indent=2) + "\n")
    date = document["date"][:10]
    suffix = "-quick" if options.quick else "-scale-out" if options.scale_out_only else ""
    report = RESULTS / f"{date}-{'-'.join(map(str, options.recipients))}{suffix}.md"
    machine = document["machine"]
    sensor = document["sensor_eval_ms"]
    report.write_text(
        f"# Throughput comparison, {document['date']}\n\n"
        f"```\n{shlex.join(sys.orig_argv)}\n```\n\n"
        f"{machine['cpu_count']} CPUs ({machine['cpu_model']}), {machine['memory_gb']} GB, "
        f"Python {machine['python']}, PostgreSQL {machine['postgres']}, "
        f"fauxqs {machine['fauxqs']} on Node {machine['node']}; sink `{options.slow_sink}` is "
        "fauxqs behind the latency proxy.\n\n"
        f"{runs_table(document['runs'])}\n\n"
        "## Ratios (recipients/s over recipients/s)\n\n"
        f"{ratios_text(document.get('ratios_by_recipients') or _top_ratios(document))}\n\n"
        "## Sensor\n\n"
        + (
            f"`asset_generated_campaigns_sensor`: {sensor} ms per evaluation (median of 5) with "
            f"{options.sensor_campaigns:,} extra campaigns, {SENSOR_WAITING} waiting.\n"
            if sensor is not None
            else "Not measured in this run.\n"
        )
    )
    return report


def _top_ratios(document: dict[str, Any]) -> dict[int, dict[str, float | None]]:
    return {document["runs"][0]["recipients"]: document["ratios"]}


def parse_options(argv: Sequence[str] | None = None) -> Options:
    """The command line, with --quick's fixed choices applied."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, nargs="+", default=[100_000])
    parser.add_argument(
        "--skip-baseline-above",
        type=int,
        default=100_000,
        help=f"above this N the seed baseline runs on {BASELINE_SAMPLE:,} recipients only",
    )
    parser.add_argument(
        "--all-sinks-up-to",
        type=int,
        default=100_000,
        help="above this N only the null sink is measured (the emulator runs take minutes)",
    )
    parser.add_argument("--latency-ms", type=float, default=20.0, help="the proxy's delay")
    parser.add_argument("--sensor-campaigns", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="CI smoke: 10k, 8 threads, no sensor")
    parser.add_argument("--sensor-only", action="store_true", help="only time the sensor")
    parser.add_argument(
        "--scale-out-only",
        action="store_true",
        help="only the one-campaign runs (processes and Celery workers); writes a report "
        "beside latest.json, not latest.json itself",
    )
    args = parser.parse_args(argv)
    recipients = (10_000,) if args.quick else tuple(sorted(set(args.recipients)))
    if min(recipients) < 6:
        parser.error("--recipients must be at least 6 (one per campaign)")
    if min(recipients) > args.all_sinks_up_to:
        parser.error("at least one --recipients value must be within --all-sinks-up-to")
    return Options(
        recipients=recipients,
        skip_baseline_above=args.skip_baseline_above,
        all_sinks_up_to=args.all_sinks_up_to,
        latency_ms=args.latency_ms,
        sensor_campaigns=args.sensor_campaigns,
        quick=args.quick,
        sensor_only=args.sensor_only,
        scale_out_only=args.scale_out_only,
    )


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # Unwinding runs every cleanup: child process groups, fauxqs, the proxy, the database.
    sys.exit(128 + signum)


def main() -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    options = parse_options()
    if options.sensor_only:
        sensor_only(options)
        return
    date = datetime.now(UTC).isoformat(timespec="seconds")
    document = {"date": date, **benchmark(options)}
    # The keys in the documented order: machine, date, runs, ratios, sensor_eval_ms.
    document = {"machine": document.pop("machine"), **document}
    print()
    print(runs_table(document["runs"]))
    print()
    print(ratios_text(document.get("ratios_by_recipients") or _top_ratios(document)))
    if document["sensor_eval_ms"] is not None:
        print(f"\nsensor_eval_ms: {document['sensor_eval_ms']}")
    report = write_results(document, options)
    latest = "" if options.scale_out_only else f" and {RESULTS / 'latest.json'}"
    print(f"\nwrote {report}{latest}")


if __name__ == "__main__":
    main()
