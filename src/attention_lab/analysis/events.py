"""Reading a run's TensorBoard event file: the `val/loss` curve (in tokens seen, or in wall time) and the last
attention map.

The curve is what a comparison plots, and for a run killed before it wrote metrics.json it is also the only
source of numbers. Steps become tokens seen, so runs with different batch sizes or context lengths share an
x axis. Anything wrong with the file becomes a note, never an exception: one bad run must not stop a report.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np

EVENT_GLOB = "events.out.tfevents.*"
VAL_LOSS_TAG = "val/loss"
IMAGE_TAG = "attention/layer_{layer}"


def _accumulator(run_dir: Path) -> Any:
    """The run's events, loaded. All scalars are kept (size 0); of the images only the newest per tag (size 1:
    TensorBoard's reservoir always keeps the last item), so a long run's hundreds of maps are not all held."""
    from tensorboard.backend.event_processing import event_accumulator as ea

    guidance = {ea.SCALARS: 0, ea.IMAGES: 1, ea.TENSORS: 1, ea.HISTOGRAMS: 1, ea.AUDIO: 1, ea.COMPRESSED_HISTOGRAMS: 1}
    acc = ea.EventAccumulator(str(run_dir), size_guidance=guidance)
    acc.Reload()
    return acc


def read_events(run_dir: Path, layer: int) -> tuple[list[tuple[int, float]], tuple[int, np.ndarray] | None, str]:
    """(val/loss as (logged step, value), last attention map of `layer`, problem or "")."""
    if not any(run_dir.glob(EVENT_GLOB)):
        return [], None, "no TensorBoard event file"
    try:
        acc = _accumulator(run_dir)
        tags = acc.Tags()
        by_step: dict[int, float] = {}
        if VAL_LOSS_TAG in tags.get("scalars", []):
            for event in acc.Scalars(VAL_LOSS_TAG):
                by_step[event.step] = event.value  # a resumed run logs some steps twice: the later one wins
        image = None
        tag = IMAGE_TAG.format(layer=layer)
        if tag in tags.get("images", []):
            from PIL import Image

            event = acc.Images(tag)[-1]
            image = (event.step, np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB")))
    except Exception as exc:  # a truncated or foreign file must not stop the report
        return [], None, f"unreadable event file ({type(exc).__name__}: {exc})"
    problems = [] if by_step else [f"no {VAL_LOSS_TAG} in the event file"]
    if image is None:
        problems.append(f"no {tag} image")
    return sorted(by_step.items()), image, "; ".join(problems)


def read_val_loss_times(run_dir: Path) -> list[tuple[int, float, float]]:
    """(logged step, seconds since the run's first logged scalar, val loss) of each `val/loss` point, from the
    events' wall times; [] when the file is missing or unreadable (read_events already notes why).

    The clock starts at the earliest scalar of any tag (the hparams metric, the first train/loss), not at the
    first validation, so the time spent training before it counts. Wall time includes validation and startup:
    it is what a user waits, not the Throughput callback's training-only seconds."""
    if not any(run_dir.glob(EVENT_GLOB)):
        return []
    try:
        acc = _accumulator(run_dir)
        tags = acc.Tags().get("scalars", [])
        if VAL_LOSS_TAG not in tags:
            return []
        start = min(min(event.wall_time for event in acc.Scalars(tag)) for tag in tags if acc.Scalars(tag))
        by_step = {event.step: (event.wall_time - start, event.value) for event in acc.Scalars(VAL_LOSS_TAG)}
    except Exception:  # a truncated or foreign file must not stop the report
        return []
    return [(step, seconds, value) for step, (seconds, value) in sorted(by_step.items())]  # resumed: later wins


def _positive_int(value: Any, default: int = 1) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    return value if isinstance(value, int) and value > 0 else default


def tokens_per_step(metrics: dict[str, Any], config: dict[str, Any] | None) -> float | None:
    """Tokens per optimizer step: exact from metrics.json (world size included), else from the config.

    The config path cannot know how many devices `trainer.devices=auto` meant, and then counts one.
    """
    step, seen = metrics.get("global_step"), metrics.get("tokens_seen")
    if isinstance(step, int) and step > 0 and isinstance(seen, (int, float)) and seen > 0:
        return seen / step
    if not config:
        return None
    batch, context = config.get("data.batch_size"), config.get("model.context_length")
    if not isinstance(batch, int) or not isinstance(context, int):
        return None
    devices = config.get("trainer.devices")
    devices = len(devices) if isinstance(devices, tuple) else _positive_int(devices)
    accumulate = _positive_int(config.get("trainer.accumulate_grad_batches"))
    return float(batch * context * accumulate * devices * _positive_int(config.get("trainer.num_nodes")))


def curve_in_tokens(
    logged: list[tuple[int, float]], global_step: int | None, per_step: float
) -> list[tuple[float, float]]:
    """Logged steps -> tokens seen. Lightning logs a validation inside fit() at global_step - 1 (the step
    counter for loggers is bumped after validation), hence + 1; a final trainer.validate() after fit logs at
    global_step itself, hence the clip."""
    points = []
    for step, value in logged:
        steps = step + 1 if global_step is None else min(step + 1, global_step)
        points.append((steps * per_step, value))
    return points


def numbers_from_curve(logged: list[tuple[int, float]], per_step: float | None) -> dict[str, Any]:
    """Numbers of a run without metrics.json, from its val/loss curve so far (a killed or running job)."""
    step, last = logged[-1]
    best = min(value for _, value in logged)
    return {
        "val_loss": last,
        "val_ppl": math.exp(last) if last < 700 else math.inf,
        "best_val_loss": best,
        "global_step": step + 1,
        "tokens_seen": None if per_step is None else (step + 1) * per_step,
    }
