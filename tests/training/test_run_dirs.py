"""Run and sweep folders: named by time and overrides (data.path included), and never shared, even by two
runs or two sweeps started in the same second."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from attention_lab.training.run_dir import run_suffix, unique_dir
from tests.training.helpers import (
    LEAN_CALLBACKS,
    compose_with_hydra,
    freeze_hydra_clock,
    read_metrics,
    run_cli,
    run_folders,
    run_script,
    tiny,
)


def test_run_folder_suffix_stays_short_and_unique() -> None:
    assert run_suffix("") == ""
    assert run_suffix("attention=gqa,attention.num_kv_heads=2") == "_attention=gqa,attention.num_kv_heads=2"
    long_a, long_b = "x" * 300 + "a", "x" * 300 + "b"
    assert len(run_suffix(long_a)) <= 121 and run_suffix(long_a) != run_suffix(long_b)
    assert "/" not in run_suffix("data.path=a/b")


def test_run_folder_suffix_holds_nothing_that_breaks_a_quoted_ckpt_path() -> None:
    """Found writing a DDP resume test: `filename='step{step}'` put a quote in the folder name, and the printed
    resume command `ckpt_path='<folder>/...'` then failed Hydra's grammar."""
    suffix = run_suffix("""callbacks.model_checkpoint.filename='step{step}',a="x y",b=${c},d=e\\f""")
    assert not set(suffix) & set("'\"$\\ \t"), suffix
    assert suffix == "_callbacks.model_checkpoint.filename=_step{step}_,a=_x_y_,b=_{c},d=e_f"
    assert run_suffix("model.layers=[sliding_window*3,multihead]") == "_model.layers=[sliding_window*3,multihead]"


def test_unique_dir_gives_each_caller_its_own_folder(tmp_path: Path) -> None:
    # old: the run folder was the bare `<time>_<overrides>` template; two resolutions in one second gave one path
    base = str(tmp_path / "runs" / "2026-01-02_03-04-05_x")
    first, second, third = unique_dir(base), unique_dir(base), unique_dir(base)
    assert [first, second, third] == [base, f"{base}-2", f"{base}-3"]
    assert all(Path(p).is_dir() for p in (first, second, third))


def test_unique_dir_is_exclusive_under_concurrent_callers(tmp_path: Path) -> None:
    """Parallel launcher jobs resolve their folders at the same moment: an exists-then-mkdir check would hand
    two of them the same folder; an exclusive mkdir cannot."""
    base = str(tmp_path / "runs" / "same")
    barrier = threading.Barrier(8)
    got: list[str] = []

    def resolve() -> None:
        barrier.wait()
        got.append(unique_dir(base))

    threads = [threading.Thread(target=resolve) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == len(set(got)) == 8
    assert set(got) == {base, *(f"{base}-{n}" for n in range(2, 9))}


def test_the_corpus_is_part_of_the_folder_name() -> None:
    # old: data.path was in hydra.job.config.override_dirname.exclude_keys, so runs on a.txt and b.txt got the
    # same folder name and only the time told them apart
    names = {
        path: compose_with_hydra([f"data.path={path}", "data=text"]).hydra.job.override_dirname
        for path in ("a.txt", "b.txt")
    }
    assert "data.path=a.txt" in names["a.txt"] and "data.path=b.txt" in names["b.txt"]
    assert run_suffix(names["a.txt"]) != run_suffix(names["b.txt"])


@pytest.mark.slow  # several trainings in one test
def test_runs_started_in_the_same_second_get_their_own_folders(tmp_path: Path, monkeypatch, corpus: Path) -> None:
    """Two runs with identical overrides in the same second, and a third on another corpus: three folders,
    each with its own metrics.json and TensorBoard file. Old: one shared folder (the second run overwrote the
    first's metrics.json and checkpoints, and the corpus did not appear in the name at all)."""
    monkeypatch.chdir(tmp_path)
    second = freeze_hydra_clock(monkeypatch)
    (tmp_path / "a.txt").write_text(corpus.read_text())
    (tmp_path / "b.txt").write_text(corpus.read_text())
    common = [*tiny(), *LEAN_CALLBACKS, "data=text", "trainer.max_steps=2", "trainer.val_check_interval=2"]
    log_dir = tmp_path / "outputs"
    for path in ("a.txt", "a.txt", "b.txt"):
        assert run_cli([*common, f"data.path={path}"], log_dir) == 0

    folders = run_folders(log_dir)
    assert len(folders) == 3, [f.name for f in folders]
    assert all(f.name.startswith(second) for f in folders)
    by_corpus: dict[str, list[Path]] = {"a.txt": [], "b.txt": []}
    for folder in folders:
        metrics = read_metrics(folder)
        assert metrics["status"] == "ok" and metrics["output_dir"] == str(folder)
        assert len(list(folder.glob("events.out.tfevents.*"))) == 1, "each run writes its own events"
        (path,) = [o.split("=", 1)[1] for o in metrics["overrides"] if o.startswith("data.path=")]
        by_corpus[path].append(folder)
    first_a, second_a = sorted(f.name for f in by_corpus["a.txt"])
    assert second_a == f"{first_a}-2", "the second identical run gets the -2 folder"
    (b,) = by_corpus["b.txt"]
    assert not b.name.startswith(first_a), "another corpus gives another folder name, not just a suffix"


@pytest.mark.slow  # several trainings in one test
def test_sweeps_started_in_the_same_second_get_their_own_folders(tmp_path: Path, monkeypatch) -> None:
    """Two sweeps in the same second: two sweep folders, each holding its own jobs. Old: one `sweeps/<time>`
    folder whose job folders (same names) the second sweep overwrote. The jobs fail on purpose, without training:
    a context longer than the corpus passes the schema and is found when the data is read; each job is recorded
    as `invalid` and the sweep goes on."""
    second = freeze_hydra_clock(monkeypatch)
    log_dir = tmp_path / "outputs"
    for _ in range(2):
        # every job invalid: the sweep's exit status is its worst job's (was 0, hiding the failures)
        assert run_cli(["-m", *tiny(), "model.context_length=1000000,2000000"], log_dir) == 2

    sweeps = run_folders(log_dir, "sweeps")
    assert [s.name for s in sweeps] == [second, f"{second}-2"]
    for sweep in sweeps:
        jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "metrics.json").is_file())
        assert [j.name.split("_")[0] for j in jobs] == ["0", "1"], [j.name for j in jobs]
        for job, context in zip(jobs, (1000000, 2000000), strict=True):
            metrics = read_metrics(job)
            assert metrics["status"] == "invalid"
            assert f"model.context_length={context}" in metrics["error"]
        assert (sweep / "multirun.yaml").is_file()


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
            "model.context_length=32,100000",
        ],
        tmp_path,
    )
    # the sweep goes on past the invalid jobs; its exit status is the worst job's, with a summary line
    assert result.returncode == 2, result.stderr[-3000:]
    assert ": 4 jobs: " in result.stderr and "2 ok" in result.stderr and "2 invalid" in result.stderr
    sweeps = list((tmp_path / "outputs" / "sweeps").iterdir())
    assert len(sweeps) == 1
    jobs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and (p / "metrics.json").exists())
    assert len(jobs) == 4
    statuses = {p.name: read_metrics(p)["status"] for p in jobs}
    # a context longer than the corpus passes the schema but fails on the data: those jobs are invalid (a user's
    # mistake found only once the corpus is read), are recorded, and the sweep goes on
    assert sorted(statuses.values()) == ["invalid", "invalid", "ok", "ok"], statuses
    for job in jobs:
        overrides = read_metrics(job)["overrides"]
        assert ("model.context_length=100000" in overrides) == (statuses[job.name] == "invalid"), overrides
        assert ("attention=gqa" in overrides) or ("attention=multihead" in overrides)
    invalid = next(p for p in jobs if statuses[p.name] == "invalid")
    assert "model.context_length=100000" in (invalid / "error.txt").read_text()


@pytest.mark.slow  # a subprocess run: several seconds
def test_a_sweep_with_an_invalid_job_trains_nothing_and_names_every_bad_job(tmp_path: Path, corpus: Path) -> None:
    """Old behaviour: jobs ran in order, so job 0 trained fully before job 1's bad setting was even looked at,
    and a sweep whose every job was invalid exited 0."""
    result = run_script(
        ["-m", *tiny(corpus=corpus), "trainer.max_steps=4", "callbacks=none", "attention.num_heads=2,3,5"],
        tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "2 of 3 sweep jobs have invalid settings; nothing was trained" in result.stderr
    assert "job 1 (" in result.stderr and "job 2 (" in result.stderr and "job 0 (" not in result.stderr
    assert "not divisible by attention.num_heads=3" in result.stderr
    sweeps = tmp_path / "outputs" / "sweeps"
    assert not sweeps.exists() or not any(sweeps.iterdir()), "a refused sweep leaves no folder behind"


@pytest.mark.slow  # a subprocess run: several seconds
def test_an_experiment_preset_sweep_leaves_exactly_one_sweep_folder(tmp_path: Path, corpus: Path) -> None:
    """The presets override hydra.sweep.dir; Hydra also resolves the default folder expression while composing,
    which reserved (and left behind) one empty folder per composition before release_unused()."""
    result = run_script(
        [
            "experiment=compare_modern",
            *tiny(corpus=corpus),
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "callbacks=none",
            "attention=multihead,gqa",
            "seed=0",  # the preset sweeps 3 seeds; one is enough here
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweeps = list((tmp_path / "outputs" / "sweeps").iterdir())
    assert [p.name.endswith("_compare_modern") for p in sweeps] == [True], sweeps
    assert len([p for p in sweeps[0].iterdir() if p.is_dir()]) == 2


@pytest.mark.slow  # ~0.5 s: keeps the quick run under a minute; CI runs it
@pytest.mark.parametrize("kind", ["run", "sweep"])
def test_a_folder_override_that_points_at_a_used_folder_is_refused(tmp_path: Path, corpus: Path, capsys, kind) -> None:
    """Found by a review: `hydra.run.dir=` / `hydra.sweep.dir=` bypass the unique folders, and a second run there
    mixed two runs' events, checkpoints and records (and a refused sweep still replaced multirun.yaml)."""
    used = tmp_path / "used"
    used.mkdir()
    (used / "metrics.json").write_text('{"status": "ok"}')
    override = f"hydra.{kind}.dir={used}"
    args = [*tiny(corpus=corpus), "trainer.max_steps=2", "callbacks=none", override]
    code = run_cli(["-m", *args, "seed=1,2"] if kind == "sweep" else args, tmp_path / "outputs")
    stderr = capsys.readouterr().err
    assert code == 2, stderr[-3000:]
    assert f"hydra.{kind}.dir={used} already holds a run or sweep" in stderr and "Traceback" not in stderr
    assert sorted(p.name for p in used.iterdir()) == ["metrics.json"], "nothing was written into the used folder"
    fresh = [*args[:-1], f"hydra.{kind}.dir={tmp_path / 'fresh'}"]
    assert run_cli(["-m", *fresh, "seed=1"] if kind == "sweep" else fresh, tmp_path / "outputs") == 0


@pytest.mark.slow  # a subprocess sweep of two tiny trainings: several seconds
def test_an_unsupported_variant_and_position_pair_is_a_hole_in_the_grid_not_a_failed_sweep(
    tmp_path: Path, corpus: Path
) -> None:
    """linear + alibi cannot exist; a variants x schemes sweep records it as `unsupported` and trains the rest."""
    result = run_script(
        [
            "-m",
            *tiny(corpus=corpus),
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "callbacks=none",
            "attention=linear,multihead",
            "model.position=alibi",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 unsupported" in result.stderr and "1 ok" in result.stderr
    (sweep,) = (tmp_path / "outputs" / "sweeps").iterdir()
    records = [read_metrics(p) for p in sweep.iterdir() if (p / "metrics.json").is_file()]
    statuses = {m["attention"]: m["status"] for m in records}
    assert statuses == {"linear": "unsupported", "multihead": "ok"}
    hole = next(m for m in records if m["status"] == "unsupported")
    assert "attention=linear does not support model.position=alibi" in hole["reason"]
    assert hole["position"] == "alibi"


def test_an_unsupported_pair_in_a_single_run_is_a_usage_error(tmp_path: Path, corpus: Path, capsys) -> None:
    code = run_cli([*tiny(corpus=corpus), "attention=linear", "model.position=alibi", "trainer.max_steps=2"], tmp_path)
    err = capsys.readouterr().err
    assert code == 2
    assert "error: attention=linear does not support model.position=alibi" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
