"""The layout's promises, checked: what is free of Dagster stays so, and modules stay small.

docs/design.md draws the layout. No database, no network: each import runs in a fresh
interpreter so that nothing imported earlier in the session hides a Dagster import.
"""

import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "campaign_pipeline"
# The domain: store, send path, SQS and the pure rules. Dagster is a shell around them.
DAGSTER_FREE = sorted(
    [
        *(f"campaign_pipeline.store.{p.stem}" for p in (PACKAGE / "store").glob("[a-z]*.py")),
        *(f"campaign_pipeline.sending.{p.stem}" for p in (PACKAGE / "sending").glob("[a-z]*.py")),
        "campaign_pipeline.sqs",
        "campaign_pipeline.payloads",
        "campaign_pipeline.batching",
        "campaign_pipeline.lifecycle",
        "campaign_pipeline.errors",
        "campaign_pipeline.privacy",
        "campaign_pipeline.clock",
        "campaign_pipeline.settings",
        "campaign_pipeline.text",
        "campaign_pipeline.defs.tags",
    ]
)
MAX_MODULE_LINES = 400


def test_the_domain_modules_import_no_dagster() -> None:
    """Importing any of them, in a fresh interpreter, loads no `dagster` module."""
    code = (
        "import importlib, sys\n"
        f"for name in {DAGSTER_FREE!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m == 'dagster' or m.startswith('dagster.')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "module", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_no_module_is_over_400_lines(module: Path) -> None:
    """One concept per module: a module that grows past this is two."""
    assert len(module.read_text().splitlines()) <= MAX_MODULE_LINES
