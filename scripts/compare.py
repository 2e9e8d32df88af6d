"""Table and plots comparing finished runs and sweeps.

    python scripts/compare.py outputs/sweeps/<sweep>                    # report into the sweep folder
    python scripts/compare.py outputs/runs/<run>                        # one run: into its folder
    python scripts/compare.py outputs/runs/<a> outputs/sweeps/<b> --out comparison --layer 1

Writes report.md, report.csv, report_grouped.csv, val_loss_vs_tokens.png, final_val_loss.png,
throughput.png and attention_maps.png. Exit code 2 when a path is not a folder or no run is found.
The logic lives in `attention_lab.compare`; this file only calls it.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from attention_lab.compare import main
except ImportError:  # not installed: run from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from attention_lab.compare import main

if __name__ == "__main__":
    sys.exit(main())
