"""Sweep job folders are named by what differs between the sweep's jobs, the variant first."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from attention_lab.training.job_names import job_suffix

EXCLUDED = ["paths.log_dir", "hydra.sweep.dir"]


def write_sweep(folder: Path, task: list[str], params: dict[str, str] | None = None) -> Path:
    """A multirun.yaml as Hydra writes it: the command's overrides (sweeps unexpanded) and sweeper params."""
    master = {
        "hydra": {
            "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "params": params},
            "overrides": {"task": task, "hydra": []},
        }
    }
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(master), folder / "multirun.yaml")
    return folder


def test_the_variant_comes_first_and_shared_overrides_are_left_out(tmp_path: Path) -> None:
    sweep = write_sweep(
        tmp_path / "a", ["data.tokenizer=char", "attention.dropout=0.0,0.1", "attention=multihead,gqa", "seed=0"]
    )
    job = ["data.tokenizer=char", "attention.dropout=0.1", "attention=gqa", "seed=0"]
    assert job_suffix(job, str(sweep), EXCLUDED) == "_attention=gqa,attention.dropout=0.1"


def test_a_presets_sweeper_params_count_as_the_sweep(tmp_path: Path) -> None:
    sweep = write_sweep(
        tmp_path / "b",
        ["experiment=compare_recent"],
        {"model.layers": "multihead,sliding_window*3+multihead", "seed": "0,1"},
    )
    job = ["model.layers=sliding_window*3+multihead", "seed=1", "experiment=compare_recent"]
    assert job_suffix(job, str(sweep), EXCLUDED) == "_model.layers=sliding_window*3+multihead,seed=1"


def test_without_the_sweeps_jobs_every_override_names_the_job(tmp_path: Path) -> None:
    job = ["seed=1", "attention=gqa", "paths.log_dir=/x"]
    assert job_suffix(job, str(tmp_path / "no_sweep_here"), EXCLUDED) == "_attention=gqa,seed=1"


def test_a_one_job_sweep_keeps_its_overrides(tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path / "c", ["attention=gqa", "seed=3"])
    assert job_suffix(["attention=gqa", "seed=3"], str(sweep), EXCLUDED) == "_attention=gqa,seed=3"
