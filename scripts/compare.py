"""Table and plots comparing finished runs and sweeps.

    python scripts/compare.py outputs/sweeps/<sweep>                    # report into the sweep folder
    python scripts/compare.py outputs/runs/<run>                        # one run: into its folder
    python scripts/compare.py outputs/runs/<a> outputs/sweeps/<b> --out comparison --layer 1

Writes report.md, report.csv, report_grouped.csv, val_loss_vs_tokens.png, final_val_loss.png,
throughput.png and attention_maps.png. Exit status 2 when a path is not a folder or no run is found.
The command lives in `attention_lab.cli.compare` (`--help` for every option); this file only calls it.
"""

import sys

from attention_lab.cli.compare import main

if __name__ == "__main__":
    sys.exit(main())
