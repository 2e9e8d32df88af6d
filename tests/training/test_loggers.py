"""Loggers beside TensorBoard (conf/logger, training/loggers.py): MLflow on a local SQLite store and W&B offline.

Each composes alone and beside TensorBoard, gets the same scalars, hyperparameters and attention maps, and needs
no server and no network. The extras are optional: the tests that train with one skip (only) when it is not
installed; choosing one that is missing is a one-line error naming the install.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hydra.utils import get_class

from attention_lab import config
from attention_lab.config import LOGGERS_INSTALL, missing_logger_packages
from attention_lab.training.loggers import sqlite_file
from tests.training.helpers import ROOT, make_cfg, read_events, read_metrics, run_cli, run_folders, tiny, wait_for

# Two validations (steps 2 and 4), attention maps on, no text sample: the smallest run that logs everything.
RUN = ["trainer.max_steps=4", "trainer.val_check_interval=2", "~callbacks.text_sample"]
MAPS = {"attention/layer_0", "attention/layer_1"}  # tiny(): two layers


# -------------------------------------------------------------------------------------- configs (quick)
@pytest.mark.parametrize(
    ("choice", "names"),
    [
        ("logger=[tensorboard,mlflow]", ["tensorboard", "mlflow"]),
        ("logger=tensorboard_mlflow", ["tensorboard", "mlflow"]),
        ("logger=[tensorboard,wandb]", ["tensorboard", "wandb"]),
        ("logger=tensorboard_wandb", ["tensorboard", "wandb"]),
        ("logger=[csv,tensorboard,mlflow,wandb]", ["csv", "tensorboard", "mlflow", "wandb"]),
        ("~logger", []),
    ],
)
def test_logger_choices_compose_and_validate(tmp_path: Path, corpus: Path, choice: str, names: list[str]) -> None:
    """Lists of the group's options and the presets compose into one entry per logger (each option file is keyed
    by its name), `~logger` into none; single choices are composed by the tests below and elsewhere."""
    cfg = make_cfg(tmp_path, [*tiny(corpus=corpus), choice])
    assert list(cfg.get("logger") or {}) == names
    for node in (cfg.get("logger") or {}).values():
        get_class(node._target_)  # the class exists; building it imports no optional package until used
    missing = [m for node in (cfg.get("logger") or {}).values() for m in missing_logger_packages(node)]
    if missing:  # an environment without the extra: the check says so instead of passing
        with pytest.raises(config.ConfigError, match=r"pip install -e"):
            config.validate(cfg)
    else:
        config.validate(cfg)


def test_stores_stay_under_the_outputs_folder(tmp_path: Path, corpus: Path) -> None:
    cfg = make_cfg(tmp_path, [*tiny(corpus=corpus), "logger=[mlflow,wandb]"])
    assert sqlite_file(cfg.logger.mlflow.tracking_uri) == tmp_path / "mlflow" / "mlflow.db"
    assert Path(cfg.logger.mlflow.artifact_location) == tmp_path / "mlflow" / "artifacts"
    assert cfg.logger.wandb.offline is True and Path(cfg.logger.wandb.save_dir) == tmp_path / "run"
    assert sqlite_file("sqlite:///relative/m.db") == Path("relative/m.db")
    assert sqlite_file("http://localhost:5000") is None and sqlite_file(None) is None


@pytest.mark.parametrize(
    ("choice", "blocked"),
    [("logger=mlflow", "mlflow"), ("logger=mlflow", "sqlalchemy"), ("logger=wandb", "wandb")],
)
def test_a_missing_extra_is_one_line_naming_the_install(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch, choice: str, blocked: str
) -> None:
    monkeypatch.setitem(sys.modules, blocked, None)  # find_spec() then says: not installed
    cfg = make_cfg(tmp_path, [*tiny(corpus=corpus), choice])
    with pytest.raises(config.ConfigError) as err:
        config.validate(cfg)
    message = str(err.value)
    assert "\n" not in message and LOGGERS_INSTALL in message and blocked in message and choice in message, message


def test_a_missing_extra_stops_the_cli_with_exit_2(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)
    log_dir = tmp_path / "outputs"
    code = run_cli([*tiny(corpus=corpus), *RUN, "logger=[tensorboard,mlflow]"], log_dir)
    stderr = capsys.readouterr().err
    assert code == 2, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and LOGGERS_INSTALL in errors[0] and "logger=mlflow" in errors[0], stderr[-3000:]
    assert "Traceback" not in stderr
    assert run_folders(log_dir) == [] and not (log_dir / "mlflow").exists(), "nothing made before the check"


# -------------------------------------------------------------------------------------- training runs
LOOPBACK = ("127.0.0.1", "::1", "localhost")


@pytest.fixture
def network_attempts(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every name lookup and TCP/UDP connection this process makes to anything but the loopback (a service
    process such as wandb's is not seen: see the README for the strace check of a whole run)."""
    attempts: list[Any] = []
    real_connect, real_lookup = socket.socket.connect, socket.getaddrinfo

    def connect(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOOPBACK:
            attempts.append(address)
        return real_connect(sock, address)

    def lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in LOOPBACK:
            attempts.append(host)
        return real_lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    for name in ("MLFLOW_DISABLE_TELEMETRY", "WANDB_ERROR_REPORTING"):  # what the loggers set when you have not
        monkeypatch.delenv(name, raising=False)
    return attempts


@pytest.mark.slow  # a new SQLite store runs MLflow's schema migrations: seconds
def test_tensorboard_and_mlflow_record_the_same_run(tmp_path: Path, corpus: Path, network_attempts: list[Any]) -> None:
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("alembic")
    from mlflow.tracking import MlflowClient

    log_dir = tmp_path / "outputs"
    assert run_cli([*tiny(corpus=corpus), *RUN, "logger=[tensorboard,mlflow]"], log_dir) == 0
    assert network_attempts == []
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true", "MLflow 3 would otherwise send usage telemetry"
    (run,) = run_folders(log_dir)
    metrics = read_metrics(run)
    assert metrics["status"] == "ok"

    client = MlflowClient(f"sqlite:///{log_dir}/mlflow/mlflow.db")  # read back offline, no server
    experiment = client.get_experiment_by_name("attention-lab")
    (record,) = client.search_runs([experiment.experiment_id])
    run_id = record.info.run_id
    assert record.info.status == "FINISHED" and record.info.run_name == run.name
    assert record.data.tags["run_dir"] == str(run.resolve())

    # scalars: every TensorBoard scalar, with the final validation loss as the latest value
    events = read_events(run)
    assert {"train/loss", "val/loss", "hp/val_loss", "lr"} <= events["scalars"]
    assert set(record.data.metrics) == events["scalars"]
    assert math.isclose(record.data.metrics["val/loss"], metrics["val_loss"], rel_tol=1e-6)
    steps = [m.step for m in client.get_metric_history(run_id, "val/loss")]
    assert len(steps) == 2 and steps == sorted(steps)

    # hyperparameters: the flat config of TensorBoard's HParams tab, with the same values
    params = record.data.params
    assert events["hparams"] and events["hparams"] <= set(params)
    assert params["attention.name"] == "multihead" and params["model.d_model"] == "32"
    assert params["model.n_layers"] == "2" and int(params["params/total"]) == metrics["params"]["total"]

    # attention maps: one image per layer and validation, at the steps of val/loss
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    for tag in MAPS:
        key = tag.replace("/", "~")  # MLflow's file name for a key with slashes
        logged = sorted(int(p.split("+step+")[1].split("+")[0]) for p in images if p.endswith(".png") and key in p)
        assert logged == steps, images
    assert events["images"] >= MAPS  # TensorBoard still has its own


def _wandb_records(path: Path) -> list[Any]:
    """The records of an offline run's .wandb file: a 7-byte header (":W&B", magic, version), then LevelDB's log
    format, 32 KiB blocks of chunks (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) of protobuf Records."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, block, chunk, records = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if pos + 7 + length > len(data):  # still being written
            break
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def _offline_run(path: Path) -> tuple[dict[str, Any], dict[str, list[Any]], list[int]]:
    """(config, history values by key, exit codes) of an offline run: what `wandb sync` would upload."""
    cfg: dict[str, Any] = {}
    history: dict[str, list[Any]] = defaultdict(list)
    exits = []
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "config":
            cfg.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            for item in record.history.item:
                history[item.key or "/".join(item.nested_key)].append(json.loads(item.value_json))
        elif kind == "exit":
            exits.append(record.exit.exit_code)
    return cfg, history, exits


@pytest.mark.slow  # wandb starts its service process: seconds
def test_wandb_offline_writes_the_run_locally_and_opens_no_connection(
    tmp_path: Path, corpus: Path, monkeypatch: pytest.MonkeyPatch, network_attempts: list[Any]
) -> None:
    wandb = pytest.importorskip("wandb")
    home = tmp_path / "wandb_home"
    for name, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": home,
        "WANDB_CONFIG_DIR": home / "config",
        "WANDB_CACHE_DIR": home / "cache",
        "WANDB_DATA_DIR": home / "data",
        "WANDB_BASE_URL": "http://127.0.0.1:9",  # a closed port: an attempt would fail and be logged, not leave
    }.items():
        monkeypatch.setenv(name, str(value))

    log_dir = tmp_path / "outputs"
    assert run_cli([*tiny(corpus=corpus), *RUN, "logger=wandb"], log_dir) == 0
    assert network_attempts == []
    assert os.environ["WANDB_ERROR_REPORTING"] == "false", "wandb's service would report its errors to W&B"
    assert wandb.run is None, "the W&B run ends with the fit (the next job of a sweep gets its own)"
    (run,) = run_folders(log_dir)
    metrics = read_metrics(run)
    (offline,) = (run / "wandb").glob("offline-run-*")
    (transaction_log,) = offline.glob("run-*.wandb")

    def finished() -> tuple[dict[str, Any], dict[str, list[Any]], list[int]] | None:
        parsed = _offline_run(transaction_log)
        return parsed if parsed[2] else None

    # wandb's service process writes the file: its last records can land just after finish() returned
    cfg, history, exits = wait_for(finished, "the offline run's exit record", timeout=60)

    assert exits == [0]
    assert cfg["attention.name"] == "multihead" and cfg["model.d_model"] == 32 and cfg["model.n_layers"] == 2
    assert cfg["params/total"] == metrics["params"]["total"]
    assert history["train/loss"] and math.isclose(history["val/loss"][-1], metrics["val_loss"], rel_tol=1e-6)
    assert len(history["val/loss"]) == 2
    for tag in MAPS:
        paths = history[f"{tag}/path"]
        assert len(paths) == 2 and all((offline / "files" / p).is_file() for p in paths), paths
    for log in offline.glob("logs/debug*.log"):
        text = log.read_text(errors="replace")
        assert "127.0.0.1:9" not in text and '"level":"ERROR"' not in text, log


@pytest.mark.slow  # a fresh interpreter: seconds
def test_tensorboard_runs_without_the_extras(tmp_path: Path, corpus: Path) -> None:
    """As on a core install: mlflow and wandb cannot be imported, the project imports and trains with TensorBoard
    (and imports neither even where they are installed), and choosing one of them is the one-line error."""
    script = f"""
import json, sys
for name in ("mlflow", "wandb"):
    sys.modules[name] = None  # import mlflow -> ImportError, find_spec -> None: as if not installed
from pathlib import Path
import torch
torch.set_num_threads(1)
from attention_lab import config
from attention_lab.training.task import train
from tests.training.helpers import make_cfg, tiny
tmp, corpus = Path({str(tmp_path)!r}), Path({str(corpus)!r})
metrics = train(make_cfg(tmp, [*tiny(corpus=corpus), "logger=tensorboard", "trainer.max_steps=2", *{RUN[2:]!r}]))
try:
    config.validate(make_cfg(tmp, [*tiny(corpus=corpus), "logger=[tensorboard,wandb]"]))
    error = None
except config.ConfigError as err:
    error = str(err)
print(json.dumps({{"status": metrics["status"], "error": error}}))
"""
    env = {"OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == "ok"
    assert result["error"] is not None and LOGGERS_INSTALL in result["error"] and "\n" not in result["error"]
    assert "events.out.tfevents" in " ".join(p.name for p in (tmp_path / "run").iterdir())
