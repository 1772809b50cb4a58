"""Cut a run of messages into SendMessageBatch calls that SQS accepts."""

import numpy as np
import numpy.typing as npt

# SendMessageBatch takes at most 10 entries, and at most the queue's maximum size in total.
MAX_BATCH_ENTRIES = 10


def batch_slices(
    sizes: npt.ArrayLike, max_bytes: int, max_entries: int = MAX_BATCH_ENTRIES
) -> list[slice]:
    """Split messages of `sizes` bytes into batches of at most `max_entries` and `max_bytes`.

    Every message must itself fit in `max_bytes` (payload building rejects larger ones). Messages
    are cut into runs of `max_entries` with array arithmetic; only a run whose total is too large
    is split again, greedily, message by message (rare: a run of ten needs messages averaging a
    tenth of the limit to overflow).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if sizes.size and int(sizes.max()) > max_bytes:
        raise ValueError(f"a message of {int(sizes.max())} bytes cannot fit in {max_bytes} bytes")
    starts = np.arange(0, sizes.size, max_entries)
    if not starts.size:
        return []
    totals = np.add.reduceat(sizes, starts)
    slices: list[slice] = []
    for start, total in zip(starts.tolist(), totals.tolist(), strict=True):
        stop = min(start + max_entries, sizes.size)
        if total <= max_bytes:
            slices.append(slice(start, stop))
            continue
        batch_start, batch_bytes = start, 0
        for position in range(start, stop):
            size = int(sizes[position])
            if batch_bytes + size > max_bytes:
                slices.append(slice(batch_start, position))
                batch_start, batch_bytes = position, 0
            batch_bytes += size
        slices.append(slice(batch_start, stop))
    return slices
