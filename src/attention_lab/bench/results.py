"""Where benchmark results go and how they are written (JSON, CSV; the PNG is drawn by `plots`).

The rule: a benchmark never overwrites the committed results by accident. Without an explicit `--out`, each
run gets a fresh folder `<outputs>/bench/<kind>/<YYYY-mm-dd_HH-MM-SS>-<random suffix>/`, where `<outputs>` is
`$ATTENTION_LAB_OUTPUTS` or `outputs` under the current directory (as for training runs). The folder is
created exclusively, so two runs started in the same second never share one. The committed results under
`benchmarks/results/` are written only when the user names that folder with `--out`.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UserError
from .plots import plot_results

OUTPUTS_ENV = "ATTENTION_LAB_OUTPUTS"  # the same variable the training configs honour (conf/paths/default.yaml)
_ATTEMPTS = 100


def outputs_root() -> Path:
    """`$ATTENTION_LAB_OUTPUTS`, or `outputs` relative to the current directory."""
    return Path(os.environ.get(OUTPUTS_ENV) or "outputs")


def new_output_dir(kind: str, now: dt.datetime | None = None) -> Path:
    """Create and return a folder no other run has: <outputs>/bench/<kind>/<date_time>-<6 hex digits>."""
    parent = outputs_root() / "bench" / kind
    parent.mkdir(parents=True, exist_ok=True)
    stamp = (now or dt.datetime.now()).strftime("%Y-%m-%d_%H-%M-%S")
    for _ in range(_ATTEMPTS):
        path = parent / f"{stamp}-{secrets.token_hex(3)}"
        try:
            path.mkdir()  # exclusive: fails if another run took this name
        except FileExistsError:
            continue
        return path
    raise RuntimeError(f"could not create a new folder under {parent} after {_ATTEMPTS} attempts")


def check_out(out: Path | str | None) -> None:
    """Refuse an `--out` that cannot be a folder, before the run rather than after it (UserError)."""
    if out is None:
        return
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is a file: --out takes a folder (the file names are fixed).")
    if not path.exists() and path.suffix in (".json", ".csv", ".png"):
        raise UserError(f"--out {path} looks like a file: --out takes a folder, e.g. --out {path.parent}.")


def output_dir(out: Path | str | None, kind: str) -> Path:
    """The folder a run writes to: `out` if the user gave one (created if needed), else a new default folder."""
    if out is None:
        return new_output_dir(kind)
    check_out(out)
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(data: dict[str, Any], path: Path) -> Path:
    """Indented JSON with a final newline (diff-friendly for committed results)."""
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def write_csv(rows: Sequence[dict[str, Any]], fields: Sequence[str], path: Path) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)
    return path


# --- the attention micro-benchmark ------------------------------------------------------------------------

CSV_FIELDS = [
    "variant",
    "T",
    "status",
    "fwd_ms_median",
    "fwd_ms_iqr",
    "fwd_bwd_ms_median",
    "fwd_bwd_ms_iqr",
    "saved_bytes",
    "peak_bytes",
    "params",
    "kv_cache_bytes_per_token",
    "verified",
    "reason",
]


def csv_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per variant and length of an attention-benchmark result; skipped points keep their reason."""
    rows = []
    for name, v in result["variants"].items():
        for t, p in v["points"].items():
            ok = p["status"] == "ok"
            rows.append(
                {
                    "variant": name,
                    "T": int(t),
                    "status": p["status"],
                    "fwd_ms_median": round(p["fwd_ms"]["median"], 4) if ok else "",
                    "fwd_ms_iqr": round(p["fwd_ms"]["iqr"], 4) if ok else "",
                    "fwd_bwd_ms_median": round(p["fwd_bwd_ms"]["median"], 4) if ok else "",
                    "fwd_bwd_ms_iqr": round(p["fwd_bwd_ms"]["iqr"], 4) if ok else "",
                    "saved_bytes": p.get("saved_bytes", ""),
                    "peak_bytes": "" if p.get("peak_bytes") is None else p["peak_bytes"],
                    "params": v["params"],
                    "kv_cache_bytes_per_token": v["kv_cache_bytes_per_token"],
                    "verified": v["verified"],
                    "reason": p.get("reason") or "",
                }
            )
    return rows


def write_results(result: dict[str, Any], out_dir: Path, stem: str = "benchmark") -> dict[str, Path]:
    """<stem>.json (everything), <stem>.csv (one row per variant and length), <stem>.png (the plot)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("json", "csv", "png")}
    write_json(result, paths["json"])
    write_csv(csv_rows(result), CSV_FIELDS, paths["csv"])
    plot_results(result, paths["png"])
    return paths
