"""`python -m campaign_pipeline.cli`: the `campaign-pipeline` command without its script."""

import sys

from campaign_pipeline.cli import main

sys.exit(main())
