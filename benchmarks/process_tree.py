"""CPU time and peak memory of a process's descendants, sampled from /proc (Linux only).

`getrusage(RUSAGE_CHILDREN)` only counts children that have been waited for: the multiprocess
executor's steps are children of its fork server, which outlives the measurement, so their cost
would be missing. This samples every descendant while it lives instead; a process's last quarter
second can be missed, which the report accepts.
"""

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SAMPLE_SECONDS = 0.25


@dataclass
class TreeUsage:
    """The last CPU seconds and the peak RSS (MB) seen for each descendant, by pid."""

    cpu_s: dict[int, float] = field(default_factory=dict)
    peak_rss_mb: dict[int, float] = field(default_factory=dict)

    @property
    def total_cpu_s(self) -> float:
        """CPU time of every descendant seen."""
        return sum(self.cpu_s.values())

    @property
    def largest_rss_mb(self) -> float:
        """The peak RSS of the largest descendant."""
        return max(self.peak_rss_mb.values(), default=0.0)


def _stat(pid: str) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of `pid`, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields start after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _peak_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def sample(root: int, usage: TreeUsage) -> None:
    """Record every current descendant of `root` into `usage`."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(entry)) is not None:
            parents[int(entry)], cpu[int(entry)] = stat
    for pid in cpu:
        ancestor = parents.get(pid)
        while ancestor is not None and ancestor != root:
            ancestor = parents.get(ancestor)
        if ancestor == root:
            usage.cpu_s[pid] = cpu[pid]
            if (rss := _peak_rss_mb(pid)) is not None:
                usage.peak_rss_mb[pid] = max(rss, usage.peak_rss_mb.get(pid, 0.0))


@contextmanager
def watch_descendants() -> Iterator[TreeUsage]:
    """Sample this process's descendants in a thread until the block ends."""
    usage = TreeUsage()
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(SAMPLE_SECONDS):
            sample(os.getpid(), usage)

    thread = threading.Thread(target=loop, name="process-tree-sampler", daemon=True)
    thread.start()
    try:
        yield usage
    finally:
        stop.set()
        thread.join()
        sample(os.getpid(), usage)
