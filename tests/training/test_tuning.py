"""hparams_search=lr (an Optuna study of optim.lr per variant) and tuned=<file> (a run takes its variant's value).

Quick tests cover the file (reading, every mistake one message naming `tuned=` and the fix, merging), the
choice of the best trial, the study's checks and a run that takes a tuned value; the slow ones run a real
3-trial search on the CPU and follow it with a run at the tuned lr, and stop a search with a signal.
"""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict, read_write

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")  # the `tune` extra

from attention_lab import config
from attention_lab.analysis.runs import read_config
from attention_lab.config.tuned import read_tuned
from attention_lab.errors import UserError
from attention_lab.training import tuning
from tests.training.helpers import (
    LEAN_CALLBACKS,
    compose_with_hydra,
    make_cfg,
    read_metrics,
    run_cli,
    run_folders,
    signal_when,
    tiny,
)

GQA = {"lr": 0.0042, "warmup_steps": 7, "val_loss": 2.1, "trials": 8, "budget": {"n_trials": 8, "max_steps": 150}}


def write_tuned(path: Path, entries: dict) -> Path:
    tuning.write_entries(path, entries)
    return path


# ------------------------------------------------------------------------------------------------ the file
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, "does not exist: tune first (attention-lab train hparams_search=lr"),
        ("gqa: {lr: [0.1", "is not readable YAML"),
        ("- gqa\n- mqa\n", "must map each variant to its settings"),
        ("gqa: {lr: -1}", "gqa.lr=-1 is not valid: it must be a number > 0"),
        ("gqa: {lr: fast}", "gqa.lr='fast' is not valid"),
        ("gqa: {lr: 0.001, warmup_steps: 2.5}", "gqa.warmup_steps=2.5 is not valid: it must be an integer >= 0"),
        ("gqa: {lrr: 0.001}", "gqa.lrr is not an entry key: did you mean lr?"),
        ("gqa: {val_loss: 2.0}", "gqa sets no optim setting"),
    ],
    ids=["missing", "bad-yaml", "not-a-mapping", "negative-lr", "text-lr", "float-warmup", "typo", "no-setting"],
)
def test_a_bad_tuned_file_is_one_message_naming_the_setting_and_the_fix(
    tmp_path: Path, text: str | None, expected: str
) -> None:
    path = tmp_path / "lr.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(config.ConfigError) as err:
        read_tuned(path)
    message = str(err.value)
    assert message.startswith(f"tuned={path}") and expected in message, message
    assert "tune" in message.split(expected)[-1] or "tune first" in message  # the fix: tune (again), or fix the file


def test_validation_refuses_a_bad_tuned_file_so_a_sweep_refuses_it_before_training(tmp_path: Path) -> None:
    """config.validate checks the file: a sweep's pre-check (which only validates) catches it before job 0 trains."""
    cfg = make_cfg(tmp_path, [*tiny(), f"tuned={tmp_path / 'missing.yaml'}"])
    with pytest.raises(config.ConfigError, match=r"^tuned=.*missing.yaml does not exist"):
        config.validate(cfg)
    with pytest.raises(config.ConfigError, match=r"^tuned=3 is not valid: it must be null or a file"):
        config.validate(make_cfg(tmp_path, [*tiny(), "tuned=3"]))


def test_a_run_with_a_missing_tuned_file_exits_2_with_one_line_and_no_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert run_cli([*tiny(), f"tuned={tmp_path / 'missing.yaml'}"], tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "tuned=" in err and "hparams_search=lr" in err
    assert run_folders(tmp_path / "out") == []


def test_merging_replaces_the_variants_entry_and_keeps_the_others(tmp_path: Path) -> None:
    path = write_tuned(tmp_path / "tuned" / "lr.yaml", {"gqa": GQA, "mqa": {"lr": 0.002}})
    tuning.merge_entry(path, "gqa", {"lr": 0.001, "val_loss": 1.9})
    tuning.merge_entry(path, "latent", {"lr": 0.005})
    assert read_tuned(path) == {
        "gqa": {"lr": 0.001, "val_loss": 1.9},
        "mqa": {"lr": 0.002},
        "latent": {"lr": 0.005},
    }
    assert path.read_text().startswith("# Optimizer settings tuned per attention variant")

    broken = tmp_path / "broken.yaml"
    broken.write_text("gqa: {lrr: 1}")  # not ours to overwrite: refused, left as it was
    with pytest.raises(config.ConfigError, match="is not an entry key"):
        tuning.merge_entry(broken, "gqa", {"lr": 0.001})
    assert broken.read_text() == "gqa: {lrr: 1}"


# ------------------------------------------------------------------------------------------------ applying
def test_a_run_takes_its_variants_tuned_settings(tmp_path: Path) -> None:
    path = write_tuned(tmp_path / "lr.yaml", {"gqa": GQA})
    cfg = make_cfg(tmp_path, [*tiny("gqa"), "attention=gqa", f"tuned={path}"])
    settings = tuning.apply_tuned(cfg)
    assert cfg.optim.lr == 0.0042 and cfg.optim.warmup_steps == 7
    config.validate(cfg)  # the tuned values pass the schema like typed ones
    record = settings.summary_fields(None, None)["tuned"]
    assert record["variant"] == "gqa" and record["file"] == str(path.resolve())
    assert record["applied"] == {"optim.lr": 0.0042, "optim.warmup_steps": 7}
    assert record["configured"] == {"optim.lr": 0.003, "optim.warmup_steps": 2}
    assert record["val_loss"] == 2.1 and record["trials"] == 8


def test_a_variant_without_an_entry_trains_at_the_configured_lr_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write_tuned(tmp_path / "lr.yaml", {"gqa": GQA})
    cfg = make_cfg(tmp_path, [*tiny(), f"tuned={path}"])
    with caplog.at_level(logging.WARNING, logger="attention_lab.training.tuning"):
        settings = tuning.apply_tuned(cfg)
    assert cfg.optim.lr == 0.003
    assert (
        "has no entry for multihead (it has: gqa)" in caplog.text
        and "hparams_search=lr attention=multihead" in caplog.text
    )
    assert settings.record["applied"] == {} and "no entry for multihead" in settings.record["note"]
    assert tuning.apply_tuned(make_cfg(tmp_path, tiny())) is None  # no tuned: nothing to do


def test_a_value_tuned_on_other_settings_or_an_unfinished_study_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = make_cfg(tmp_path, [*tiny("gqa"), "attention=gqa"])
    entry = {**GQA, "trials": 3, "tuned_on": {**tuning.tuned_on(cfg), "model.d_model": 128}}
    path = write_tuned(tmp_path / "lr.yaml", {"gqa": entry})
    with open_dict(cfg):
        cfg.tuned = str(path)
    with caplog.at_level(logging.WARNING, logger="attention_lab.training.tuning"):
        tuning.apply_tuned(cfg)
    assert "model.d_model=128 (this run: 32)" in caplog.text
    assert "unfinished study (3 of 8 trials)" in caplog.text
    assert cfg.optim.lr == 0.0042  # a warning, not a refusal


# ------------------------------------------------------------------------------------------------ the search
def test_the_search_config_is_a_seeded_optuna_study_of_the_lr() -> None:
    cfg = compose_with_hydra(["hparams_search=lr", "attention=gqa"])
    sweeper = cfg.hydra.sweeper
    assert "optuna" in sweeper._target_ and sweeper.direction == "minimize" and sweeper.n_jobs == 1
    assert sweeper.sampler._target_.endswith("TPESampler") and sweeper.sampler.seed == 1
    assert dict(sweeper.params) == {"optim.lr": "tag(log, interval(3e-4, 1e-2))"}
    assert cfg.hydra.callbacks.tuning._target_ == "attention_lab.training.tuning.TuningRecorder"
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.trainer.max_steps == 150
    assert tuning.searched_settings(cfg) == {"optim.lr": "tag(log, interval(3e-4, 1e-2))"}
    warmup = compose_with_hydra(["hparams_search=lr_warmup"])
    assert set(tuning.searched_settings(warmup)) == {"optim.lr", "optim.warmup_steps"}


def with_task_overrides(cfg, *overrides: str):
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.overrides.task.extend(overrides)
    return cfg


@pytest.mark.parametrize(
    ("base", "extra", "expected", "fix"),
    [
        (
            ["attention=gqa"],
            ["attention=multihead,gqa"],
            "cannot sweep attention=multihead,gqa",
            "lr attention=multihead",
        ),
        (["experiment=compare_modern"], [], "seed=0,1,2", "drop experiment=... and pass its settings"),
        (["attention=gqa"], ["optim.lr=1e-3"], "searches nothing: optim.lr is fixed", "Drop optim.lr=..."),
    ],
    ids=["variant-list", "preset", "fixed-lr"],
)
def test_a_search_that_cannot_give_one_value_per_variant_is_refused(base, extra, expected, fix) -> None:
    cfg = with_task_overrides(compose_with_hydra(["hparams_search=lr", *base]), *extra)
    with pytest.raises(UserError) as err:
        tuning.searched_settings(cfg)
    assert expected in str(err.value) and fix in str(err.value), str(err.value)


def test_a_search_on_the_command_line_adds_to_the_study() -> None:
    cfg = with_task_overrides(compose_with_hydra(["hparams_search=lr"]), "optim.warmup_steps=int(interval(0,60))")
    assert tuning.searched_settings(cfg) == {
        "optim.lr": "tag(log, interval(3e-4, 1e-2))",
        "optim.warmup_steps": "int(interval(0,60))",
    }


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["attention=multihead,gqa"], "cannot sweep attention=multihead,gqa"),
        pytest.param(  # each case composes and launches a search (~0.3-0.8 s): CI runs the other two
            ["tuned=outputs/tuned/lr.yaml"], "cannot be combined with hparams_search", marks=pytest.mark.slow
        ),
        pytest.param(
            ["attention=gqa", "attention.num_kv_heads=3"],
            "set attention.num_kv_heads to a divisor of 4",
            marks=pytest.mark.slow,
        ),
    ],
    ids=["variant-list", "tuned", "invalid-setting"],
)
def test_a_refused_search_exits_2_before_any_trial_and_leaves_no_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], expected: str
) -> None:
    assert run_cli(["hparams_search=lr", *args], tmp_path) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and expected in err, err
    assert run_folders(tmp_path, "sweeps") == []


def fake_trial(sweep: Path, num: int, lr: float, status: str, val_loss: float | None, tmp_path: Path, **extra) -> None:
    folder = sweep / f"{num}_lr={lr}"
    (folder / ".hydra").mkdir(parents=True)
    cfg = make_cfg(tmp_path, [*tiny("gqa"), "attention=gqa", f"optim.lr={lr}", "optim.warmup_steps=43"])
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml")
    metrics = {"status": status, "attention": "gqa", "val_loss": val_loss, "max_steps": 4, "tokens_seen": 512}
    (folder / "metrics.json").write_text(json.dumps({**metrics, **extra}))


def write_search(sweep: Path, *keys: str) -> None:
    search = {key: "tag(log, interval(3e-4, 1e-2))" for key in keys}
    sweep.mkdir()
    (sweep / tuning.SEARCH_FILE).write_text(OmegaConf.to_yaml({"variant": "gqa", "search": search, "n_trials": 5}))


def test_the_best_entry_is_the_finished_trial_with_the_lowest_final_val_loss(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    write_search(sweep, "optim.lr")
    assert tuning.best_entry(sweep) is None  # nothing finished yet
    fake_trial(sweep, 0, 0.001, "ok", 2.3, tmp_path)
    fake_trial(sweep, 1, 0.009, "diverged", None, tmp_path)
    fake_trial(sweep, 2, 0.004, "ok", 2.1, tmp_path)
    fake_trial(sweep, 3, 0.002, "interrupted", None, tmp_path)
    variant, entry = tuning.best_entry(sweep)
    assert variant == "gqa" and entry["lr"] == 0.004 and entry["val_loss"] == 2.1
    assert entry["trials"] == 4 and entry["ok_trials"] == 2 and entry["best_run"] == "2_lr=0.004"
    assert entry["budget"] == {"n_trials": 5, "max_steps": 4, "tokens_per_trial": 512, "seed": 1337}
    assert entry["tuned_on"]["model.d_model"] == 32 and entry["tuned_on"]["attention.num_kv_heads"] == 2
    assert "warmup_steps" not in entry  # only what was searched is applied later
    read_tuned(write_tuned(tmp_path / "lr.yaml", {variant: entry}))  # what is written can be read back


def test_a_searched_warmup_is_recorded_as_the_trial_trained_with_it(tmp_path: Path) -> None:
    """A warmup >= trainer.max_steps is cut to a tenth of the run: the entry holds the warmup that was used."""
    sweep = tmp_path / "sweep"
    write_search(sweep, "optim.lr", "optim.warmup_steps")
    fake_trial(sweep, 0, 0.001, "ok", 2.3, tmp_path, warmup_steps_used=1)
    assert tuning.best_entry(sweep)[1]["warmup_steps"] == 1


# ------------------------------------------------------------------------------------------------ for real
TRIAL = [*tiny("gqa"), "attention=gqa", *LEAN_CALLBACKS, "trainer.max_steps=4", "trainer.val_check_interval=2"]


@pytest.mark.slow  # three trainings and a follow-up run: ~30 s on 2 busy cores
def test_a_three_trial_search_writes_the_best_lr_and_a_run_trains_with_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "outputs"
    assert run_cli(["hparams_search=lr", *TRIAL, "hydra.sweeper.n_trials=3"], out) == 0
    err = capsys.readouterr().err
    (sweep,) = run_folders(out, "sweeps")
    assert sweep.name.endswith("_tune_lr_gqa")
    trials = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name.split("_")[0] for p in trials] == ["0", "1", "2"]
    results = {}
    for trial in trials:
        metrics = read_metrics(trial)
        assert metrics["status"] == "ok"
        lr = OmegaConf.load(trial / ".hydra" / "config.yaml").optim.lr
        assert trial.name == f"{trial.name.split('_')[0]}_lr={lr}"
        results[lr] = metrics["val_loss"]
    assert len(set(results)) == 3 and all(3e-4 <= lr <= 1e-2 for lr in results)
    best_lr = min(results, key=results.get)

    project = out / "tuned" / "lr.yaml"
    entry = read_tuned(project)["gqa"]
    assert entry["lr"] == best_lr and entry["val_loss"] == results[best_lr]
    assert entry["trials"] == entry["ok_trials"] == entry["budget"]["n_trials"] == 3
    assert entry["budget"]["max_steps"] == 4 and entry["sweep"] == str(sweep)
    assert read_tuned(sweep / "tuned.yaml") == {"gqa": entry}
    optuna = OmegaConf.load(sweep / "optimization_results.yaml")
    assert optuna.best_params["optim.lr"] == best_lr and optuna.best_value == results[best_lr]
    assert f"tuned: gqa optim.lr={best_lr:.4g}" in err and f"-> {project}" in err
    assert f"sweep {sweep}: 3 jobs: 3 ok" in err  # our end-of-sweep summary works under the Optuna sweeper

    # a run (here a 2-job sweep, as the comparison presets are) takes the tuned lr for gqa, not for multihead
    following = [a for a in TRIAL if a != "attention=gqa"]
    assert run_cli(["-m", *following, "attention=gqa,multihead", f"tuned={project}"], out) == 0
    (compare,) = [p for p in run_folders(out, "sweeps") if p != sweep]
    runs = {read_metrics(p)["attention"]: p for p in compare.iterdir() if p.is_dir()}
    gqa = read_metrics(runs["gqa"])
    assert gqa["tuned"]["applied"] == {"optim.lr": best_lr} and gqa["tuned"]["configured"] == {"optim.lr": 0.003}
    checkpoint = torch.load(runs["gqa"] / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["optim"]["lr"] == best_lr  # what it trained with
    assert read_config(runs["gqa"])[1]["optim.lr"] == best_lr  # what compare reads
    assert (runs["gqa"] / ".hydra" / "config.yaml").read_text().startswith(f"# optim.lr from tuned={project.resolve()}")
    assert read_metrics(runs["multihead"])["tuned"]["applied"] == {}
    assert read_config(runs["multihead"])[1]["optim.lr"] == 0.003


@pytest.mark.slow  # a subprocess search: several seconds
def test_a_signal_stops_a_search_and_no_tuned_value_is_written(tmp_path: Path) -> None:
    """Our signal handling under the Optuna sweeper: the trial stops with a checkpoint and exit 143, the sweep
    records how it stopped, and a study without a finished trial writes no value (nor touches the project file)."""
    args = ["hparams_search=lr", *tiny("gqa"), "attention=gqa", *LEAN_CALLBACKS, "trainer.max_steps=100000"]
    pattern = "sweeps/*_tune_lr_gqa/0_*/checkpoints/last.ckpt"
    trial_0 = lambda: next((tmp_path / "outputs").glob(pattern), None)  # noqa: E731
    code, stderr = signal_when(
        [*args, "trainer.val_check_interval=5"], tmp_path, trial_0, "a checkpoint of trial 0", signal.SIGTERM, 120
    )
    assert code == 143, stderr[-3000:]
    (sweep,) = run_folders(tmp_path / "outputs", "sweeps")
    (trial,) = [p for p in sweep.iterdir() if p.is_dir()]
    assert read_metrics(trial)["status"] == "interrupted" and "resume" in read_metrics(trial)
    assert json.loads((sweep / "sweep_status.json").read_text())["stopped_job"] == 0
    assert "sweep stopped by a signal during job 0" in stderr
    assert not (sweep / "tuned.yaml").exists() and not (tmp_path / "outputs" / "tuned").exists()
