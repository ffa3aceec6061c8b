"""``python -m gateway.demo [OUTPUT_DIR]``: the same as ``dots-gateway demo``."""

import sys
from pathlib import Path

from gateway.demo.story import run

sys.exit(run(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-output")))
