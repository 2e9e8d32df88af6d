"""The training task end to end on tiny settings: config composition, every variant, resume, sweeps, DDP,
TensorBoard contents, and the errors a user meets with bad input."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from attention_lab.attention import AttentionConfigError, available
from attention_lab.checkpoint import CheckpointError
from attention_lab.data import DataConfigError
from attention_lab.train import ConfigError, train, validate_config

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

CORPUS = "The quick brown fox jumps over the lazy dog. Attention is all you need, they said.\n" * 60

TINY = [
    "data.tokenizer=char",
    "model.d_model=32",
    "model.n_layers=2",
    "model.context_length=32",
    "data.batch_size=4",
    "optim.warmup_steps=2",
    "trainer.accelerator=cpu",
    "trainer.enable_model_summary=false",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=2",
    "attention.num_heads=2",
]
NO_HEADS = {"simplified", "self_attention_v1", "self_attention", "causal"}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(CORPUS)
    return path


def tiny(name: str = "multihead", corpus: Path | None = None) -> list[str]:
    """TINY for `name` (no num_heads for single-head variants), on `corpus` (data=text) when given."""
    overrides = [o for o in TINY if name not in NO_HEADS or not o.startswith("attention.num_heads")]
    return overrides + (["data=text", f"data.path={corpus}"] if corpus is not None else [])


def make_cfg(tmp_path: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"paths.output_dir={tmp_path / 'run'}",
                f"paths.log_dir={tmp_path}",
                f"paths.cache_dir={tmp_path / 'cache'}",
                *overrides,
            ],
        )
    return cfg


def read_events(run_dir: Path) -> dict[str, set[str]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list(run_dir.rglob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file under {run_dir}"
    from tensorboard.plugins.hparams import plugin_data_pb2

    tags: dict[str, set[str]] = {
        "scalars": set(),
        "images": set(),
        "tensors": set(),
        "hparams": set(),
        "metrics": set(),
    }
    for file in files:
        acc = EventAccumulator(str(file), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
        acc.Reload()
        for kind in ("scalars", "images", "tensors"):
            tags[kind] |= set(acc.Tags()[kind])
        for tag, content in acc.PluginTagToContent("hparams").items():
            data = plugin_data_pb2.HParamsPluginData.FromString(content)
            if tag == "_hparams_/experiment":
                tags["metrics"] |= {m.name.tag for m in data.experiment.metric_infos}
            if tag == "_hparams_/session_start_info":
                tags["hparams"] |= set(data.session_start_info.hparams)
    return tags


# ----------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    "override",
    [f"attention={n}" for n in available()]
    + [f"model={m}" for m in ("tiny", "small", "gpt2_124m", "gpt2_small")]
    + [f"trainer={t}" for t in ("default", "cpu", "gpu", "ddp", "ddp_spawn", "fsdp")]
    + ["data=default", "data=text data.path=x.txt", "logger=tensorboard", "logger=csv", "callbacks=none"]
    + [f"experiment={e}" for e in ("heads_dropout", "gpt2_124m", "compare_classic", "compare_modern")],
)
def test_every_config_group_composes(tmp_path: Path, override: str) -> None:
    cfg = make_cfg(tmp_path, override.split())
    assert cfg.attention.name in available()
    assert cfg.data.context_length == cfg.model.context_length  # interpolated, never typed twice
    assert (
        cfg.callbacks is None
        or "throughput" not in cfg.callbacks
        or cfg.callbacks.throughput.log_every_n_steps == (cfg.trainer.log_every_n_steps)
    )


def test_attention_yaml_lists_every_knob_with_its_default(tmp_path: Path) -> None:
    from attention_lab.attention import get_variant

    for name in available():
        cfg = make_cfg(tmp_path, [f"attention={name}"])
        knobs = {k: v for k, v in cfg.attention.items() if k != "name"}
        assert knobs == get_variant(name).knobs, name


def test_run_folder_suffix_stays_short_and_unique() -> None:
    from attention_lab.train import run_suffix

    assert run_suffix("") == ""
    assert run_suffix("attention=gqa,attention.num_kv_heads=2") == "_attention=gqa,attention.num_kv_heads=2"
    long_a, long_b = "x" * 300 + "a", "x" * 300 + "b"
    assert len(run_suffix(long_a)) <= 121 and run_suffix(long_a) != run_suffix(long_b)
    assert "/" not in run_suffix("data.path=a/b")


# ------------------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize(
    ("overrides", "error", "match"),
    [
        (["attention.name=nope"], AttentionConfigError, r"unknown attention variant 'nope'.*multihead"),
        (["attention.num_heads=3"], AttentionConfigError, r"d_(out|model)=32 is not divisible by num_heads=3.*divisor"),
        (["attention=gqa", "attention.num_kv_heads=3"], AttentionConfigError, r"num_kv_heads=3.*divisor of 2"),
        (["attention=sliding_window", "attention.window=0"], AttentionConfigError, r"window=0.*attention.window"),
        (["+attention.heads=2"], AttentionConfigError, r"no setting heads.*num_heads"),
        (["data=text"], ConfigError, r"data=text needs a corpus: add data.path"),
        (["data.path=/no/such/corpus.txt"], ConfigError, r"data.path=/no/such/corpus.txt does not exist"),
        (["data.tokenizer=bpe"], ConfigError, r"data.tokenizer='bpe'.*data.tokenizer=char"),
        (["trainer.accelerator=gpu"], ConfigError, r"no CUDA GPU.*trainer=cpu"),
        (["trainer.precision=16-mixed"], ConfigError, r"precision=16-mixed needs a GPU.*32-true"),
        (["optim.warmup_steps=50", "trainer.max_steps=10"], ConfigError, r"warmup_steps=50 >= trainer.max_steps=10"),
        (["ckpt_path=/no/such.ckpt"], CheckpointError, r"/no/such.ckpt does not exist"),
        (["trainer.max_steps=-1"], ConfigError, r"trainer.max_steps=-1.*positive number of optimizer steps"),
    ],
)
def test_bad_config_fails_before_training_with_the_fix(tmp_path, overrides, error, match) -> None:
    if "gpu" in overrides[0] and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    cfg = make_cfg(tmp_path, [*tiny(), *overrides])
    with pytest.raises(error, match=match):
        validate_config(cfg)


def test_ddp_inside_a_sweep_is_refused_with_the_fix(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, [*tiny(), "trainer=ddp"])
    validate_config(cfg, multirun=False)  # a single ddp run is fine
    with pytest.raises(ConfigError, match=r"trainer=ddp cannot run inside a sweep.*ddp_spawn"):
        validate_config(cfg, multirun=True)


def test_context_longer_than_corpus_fails_before_the_model_is_built(tmp_path: Path, corpus: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("tiny corpus " * 10)
    cfg = make_cfg(tmp_path, [*tiny(corpus=short), "model.context_length=64"])
    with pytest.raises(DataConfigError, match=r"context_length"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_corrupt_and_mismatched_checkpoints_are_refused(tmp_path: Path, corpus: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        validate_config(make_cfg(tmp_path, [*tiny(), f"ckpt_path={bad}"]))
    cfg = make_cfg(tmp_path, [*tiny(corpus=corpus), "trainer.max_steps=3", "callbacks=none"])
    cfg.callbacks = {
        "ckpt": {
            "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
            "dirpath": str(tmp_path / "ck"),
            "every_n_train_steps": 3,
            "filename": "ck",
        }
    }
    train(cfg)
    ckpt = next((tmp_path / "ck").glob("*.ckpt"))
    other = make_cfg(tmp_path, [*tiny(), "model.d_model=64", f"ckpt_path={ckpt}"])
    with pytest.raises(CheckpointError, match=r"d_model: checkpoint 32 vs config 64"):
        validate_config(other)


# ------------------------------------------------------------------------------------------- training
@pytest.mark.slow
@pytest.mark.parametrize("name", available())
def test_fast_dev_run_every_variant(tmp_path: Path, corpus: Path, name: str) -> None:
    cfg = make_cfg(tmp_path, [f"attention={name}", *tiny(name, corpus=corpus), "+trainer.fast_dev_run=2"])
    metrics = train(cfg)
    assert metrics["status"] == "ok"
    assert metrics["global_step"] == 2
    assert metrics["val_loss"] is not None and torch.isfinite(torch.tensor(metrics["val_loss"]))


@pytest.mark.slow
def test_short_run_lowers_val_loss_and_logs_everything(tmp_path: Path, corpus: Path) -> None:
    cfg = make_cfg(
        tmp_path,
        [
            *tiny(corpus=corpus),
            "trainer.max_steps=60",
            "trainer.val_check_interval=30",
            "attention.dropout=0.0",
        ],
    )
    metrics = train(cfg)
    run = tmp_path / "run"
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["status"] == "ok" and saved["global_step"] == 60
    vocab = len(set(CORPUS))
    assert saved["val_loss"] < math.log(vocab) - 1.0, "60 steps on a repetitive corpus must beat a uniform guess"
    assert saved["best_val_loss"] <= saved["val_loss"] + 1e-6
    assert saved["tokens_seen"] == 60 * 4 * 32 and saved["tokens_per_sec"] > 0
    assert saved["params"]["total"] == metrics["params"]["total"] > 0
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
    tags = read_events(run)
    for scalar in ("train/loss", "val/loss", "val/ppl", "lr", "throughput/tokens_per_sec", "hp/val_loss"):
        assert scalar in tags["scalars"], scalar
    assert any(t.startswith("attention_entropy/layer_1/head_1") for t in tags["scalars"])
    assert {"attention/layer_0", "attention/layer_1"} <= tags["images"]
    assert "samples/text_summary" in tags["tensors"]
    assert tags["metrics"] == {"hp/val_loss"}, "the HParams tab needs a real metric, not hp_metric=-1"
    assert {"attention.name", "attention.num_heads", "model.d_model", "params/total"} <= tags["hparams"]


@pytest.mark.slow
@pytest.mark.parametrize(("stop", "total"), [(10, 14), (35, 40)])  # mid-epoch; the end of epoch 0 (35 batches)
def test_resume_continues_at_the_same_step_with_the_same_losses(tmp_path: Path, corpus: Path, stop, total) -> None:
    common = [
        *tiny(corpus=corpus),
        "trainer.val_check_interval=5",
        "logger=csv",
        "trainer.log_every_n_steps=1",
        f"trainer.max_steps={total}",
    ]

    def run(name: str, extra: list[str], every: int | None = None) -> None:
        cfg = make_cfg(tmp_path / name, [*common, *extra])
        cfg.paths.output_dir = str(tmp_path / name)
        if every:  # keep a checkpoint at step `every` of a run whose schedule still spans `total` steps
            with open_dict(cfg):
                cfg.callbacks.model_checkpoint.every_n_train_steps = every
                cfg.callbacks.model_checkpoint.save_top_k = -1
                cfg.callbacks.model_checkpoint.monitor = None
                cfg.callbacks.model_checkpoint.filename = "step{step}"
        train(cfg)

    run("full", [])
    run("a", [], every=stop)
    ckpt = tmp_path / "a" / "checkpoints" / f"step{stop}.ckpt"
    assert ckpt.is_file()
    run("b", [f"ckpt_path={ckpt}"])

    def losses(name: str) -> dict[int, float]:
        rows = (tmp_path / name / "csv" / "metrics.csv").read_text().splitlines()
        header = rows[0].split(",")
        step, loss = header.index("step"), header.index("train/loss")
        return {int(r.split(",")[step]): float(r.split(",")[loss]) for r in rows[1:] if r.split(",")[loss]}

    reference, after = losses("full"), losses("b")
    assert min(after) == stop, f"the resumed run must start at step {stop}"
    assert sorted(after) == list(range(stop, total))
    for step in sorted(after):
        assert after[step] == pytest.approx(reference[step], abs=1e-5), step
    final = {n: json.loads((tmp_path / n / "metrics.json").read_text())["val_loss"] for n in ("full", "b")}
    assert final["b"] == pytest.approx(final["full"], abs=1e-5)


def test_last_step_is_validated_and_checkpointed(tmp_path: Path, corpus: Path) -> None:
    cfg = make_cfg(
        tmp_path,
        [
            *tiny(corpus=corpus),
            "trainer.max_steps=7",
            "trainer.val_check_interval=5",
            "logger=csv",
        ],
    )
    metrics = train(cfg)
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == metrics["global_step"] == 7, "last.ckpt must hold the final weights"
    assert metrics["best_val_loss"] <= metrics["val_loss"] + 1e-6


def test_probe_with_characters_the_corpus_lacks_is_filtered() -> None:
    from attention_lab.callbacks import encode_known
    from attention_lab.data import CharTokenizer

    tokenizer = CharTokenizer.from_text("abc ")
    assert tokenizer.decode(encode_known(tokenizer, "The cab.")) == " cab"


# --------------------------------------------------------------------------------------- subprocesses
def run_script(args: list[str], tmp_path: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "ATTENTION_LAB_OUTPUTS": str(tmp_path / "outputs"),
        "ATTENTION_LAB_CACHE": str(tmp_path / "cache"),
        "MPLBACKEND": "Agg",
    }
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train.py"), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_multirun_2x2_writes_one_sweep_and_survives_a_failing_job(tmp_path: Path, corpus: Path) -> None:
    result = run_script(
        [
            "-m",
            *tiny(corpus=corpus),
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
            "callbacks=none",
            "attention=multihead,gqa",
            "attention.num_heads=2,3",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweeps = list((tmp_path / "outputs" / "sweeps").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and (p / "metrics.json").exists())
    assert len(jobs) == 4
    statuses = {p.name: json.loads((p / "metrics.json").read_text())["status"] for p in jobs}
    # num_heads=3 does not divide d_model=32: those jobs fail, are recorded, and the sweep goes on
    assert sorted(statuses.values()) == ["failed", "failed", "ok", "ok"], statuses
    for name, status in statuses.items():
        assert ("num_heads=3" in name) == (status == "failed")
        assert ("attention=gqa" in name) or ("attention=multihead" in name)
    failed = next(p for p in jobs if statuses[p.name] == "failed")
    assert "not divisible by num_heads=3" in (failed / "error.txt").read_text()


@pytest.mark.slow
def test_ddp_spawn_writes_the_workers_metrics(tmp_path: Path, corpus: Path) -> None:
    result = run_script(
        [
            *tiny(),
            "trainer=ddp_spawn",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "data=text",
            f"data.path={corpus}",
            "trainer.max_steps=5",
            "trainer.val_check_interval=2",
            "callbacks=none",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["global_step"] == 5 and metrics["tokens_seen"] == 5 * 4 * 32 * 2
    assert metrics["val_loss"] is not None


@pytest.mark.slow
def test_printed_resume_command_parses_for_a_run_folder_with_overrides(tmp_path: Path, corpus: Path) -> None:
    args = [*tiny(corpus=corpus), "trainer.val_check_interval=2", "callbacks=default"]
    first = run_script([*args, "trainer.max_steps=4"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    resume = next(line for line in first.stdout.splitlines() if line.startswith("resume:"))
    ckpt_arg = resume.split("<same overrides> ")[1].strip('"')
    assert "=" in ckpt_arg.split("ckpt_path=")[1], "the run folder name carries the overrides"
    second = run_script([*args, "trainer.max_steps=6", ckpt_arg], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    newest = max((tmp_path / "outputs" / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    assert json.loads((newest / "metrics.json").read_text())["global_step"] == 6


@pytest.mark.slow
def test_ddp_two_cpu_processes_single_run(tmp_path: Path, corpus: Path) -> None:
    result = run_script(
        [
            *tiny(),
            "trainer=ddp",
            "trainer.devices=2",
            "data=text",
            f"data.path={corpus}",
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "runs").iterdir())
    assert len(runs) == 1, "rank 1 must write into rank 0's run folder, not a folder of its own"
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["global_step"] == 4
    assert metrics["tokens_seen"] == 4 * 4 * 32 * 2  # two ranks, each its own shard
    assert len(list(runs[0].glob("events.out.tfevents.*"))) == 1, "only rank 0 logs"


def test_checkpoint_state_dict_holds_each_weight_once() -> None:
    from attention_lab.module import LitGPT

    module = LitGPT(
        model={
            "vocab_size": 20,
            "context_length": 8,
            "d_model": 16,
            "n_layers": 1,
            "attention": {"name": "multihead", "num_heads": 2},
        },
        optim={},
    )
    keys = [k for k in module.state_dict() if not k.startswith("val_loss")]
    assert keys and all(k.startswith("model.") for k in keys), keys
