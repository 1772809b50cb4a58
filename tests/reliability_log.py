"""One JSON line per fault scenario, for `scripts/reliability_report.py` to turn into a table.

`record` appends to the file named by `RELIABILITY_LOG` and does nothing when it is unset, so
the tests run the same either way. Lines are appended whole with one `write` on a file opened for
appending, so several test processes may share a log.
"""

import json
import os
from typing import Any

LOG_VARIABLE = "RELIABILITY_LOG"


def record(scenario: str, **fields: Any) -> None:
    """Append `{"scenario": scenario, **fields}` to $RELIABILITY_LOG, if it is set."""
    path = os.environ.get(LOG_VARIABLE)
    if not path:
        return
    line = json.dumps({"scenario": scenario, **fields}, sort_keys=True, default=str) + "\n"
    with open(path, "a", encoding="utf-8") as log:
        log.write(line)
