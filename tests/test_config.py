"""The one schema: every setting has a type and a range, the attention YAML is generated from the registry,
and every bad value fails in `validate` with a message that names the setting and a value that works."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
from omegaconf import DictConfig

import attention_lab
from attention_lab.attention import available
from attention_lab.config import SECTIONS, attention_yaml, validate
from attention_lab.errors import UserError
from attention_lab.training.optim import effective_warmup
from tests.helpers import compose_train

CONF = Path(attention_lab.__file__).parent / "conf"


def make_cfg(tmp_path: Path, overrides: list[str]) -> DictConfig:
    return compose_train([f"paths.output_dir={tmp_path / 'run'}", *overrides])


@pytest.mark.parametrize("name", available())
def test_attention_yaml_is_generated_from_the_registry(name: str) -> None:
    path = CONF / "attention" / f"{name}.yaml"
    assert path.is_file(), f"no conf/attention/{name}.yaml: run python -m attention_lab.config"
    assert path.read_text() == attention_yaml(name), "out of sync with the registry: run python -m attention_lab.config"


def test_no_attention_yaml_without_a_variant() -> None:
    assert sorted(p.stem for p in (CONF / "attention").glob("*.yaml")) == available()


def test_every_schema_setting_exists_in_the_default_config(tmp_path: Path) -> None:
    """A schema field the YAML lacks would never be checked; a renamed YAML key would slip past the schema."""
    cfg = make_cfg(tmp_path, [])
    for section, schema in SECTIONS.items():
        for f in fields(schema):
            assert f.name in cfg[section], f"{section}.{f.name} is in the schema but not in the config"


def test_the_defaults_are_valid(tmp_path: Path) -> None:
    validate(make_cfg(tmp_path, []))


@pytest.mark.parametrize(
    ("overrides", "setting", "fix"),
    [
        (["optim.lr=0"], "optim.lr=0", "optim.lr=3e-3"),
        (["optim.lr=-1e-3"], "optim.lr=-0.001", "optim.lr=3e-3"),
        (["optim.lr=abc"], "optim.lr='abc'", "optim.lr=3e-3"),
        (["optim.min_lr_ratio=-2"], "optim.min_lr_ratio=-2", "optim.min_lr_ratio=0.1"),
        (["optim.betas=[0.9]"], "optim.betas", "[0.9,0.95]"),
        (["optim.warmup_steps=-1"], "optim.warmup_steps=-1", "optim.warmup_steps=30"),
        (["trainer.val_check_interval=0"], "trainer.val_check_interval=0", "trainer.val_check_interval=50"),
        (["trainer.val_check_interval=1.5"], "trainer.val_check_interval=1.5", "trainer.val_check_interval=50"),
        (["trainer.max_steps=0"], "trainer.max_steps=0", "trainer.max_steps=300"),
        (["trainer.max_steps=true"], "trainer.max_steps=True", "trainer.max_steps=300"),
        (["trainer.precision=8"], "trainer.precision", "32-true"),
        (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=1.0"),
        (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps=0", "trainer.log_every_n_steps=10"),
        (["data.batch_size=0"], "data.batch_size=0", "data.batch_size=16"),
        (["data.val_fraction=0.0"], "data.val_fraction=0.0", "data.val_fraction=0.1"),
        (["data.val_fraction=1.0"], "data.val_fraction=1.0", "data.val_fraction=0.1"),
        (["data.stride=0"], "data.stride=0", "data.stride=64"),
        (["data.num_workers=-1"], "data.num_workers=-1", "data.num_workers=0"),
        (["data.tokenizer=bpe"], "data.tokenizer='bpe'", "data.tokenizer=char"),
        (["model.context_length=0"], "model.context_length=0", "model.context_length=128"),
        (["model.emb_dropout=1.0"], "model.emb_dropout=1.0", "model.emb_dropout=0.1"),
        (["seed=-1"], "seed=-1", "seed=1337"),
        (["compile=maybe"], "compile='maybe'", "compile=false"),
        (["attention.dropout=1.5"], "attention.dropout", "[0, 1)"),
        (["attention.num_heads=0"], "attention.num_heads=0", "attention.num_heads=4"),
        (["attention.num_heads=3"], "num_heads=3", "attention.num_heads to a divisor of 128"),
        (["attention=gqa", "attention.num_kv_heads=3"], "num_kv_heads=3", "attention.num_kv_heads"),
        (["attention=sliding_window", "attention.window=0"], "attention.window=0", "model.context_length=128"),
        (["attention=gqa", "+attention.window=4"], "window", "num_kv_heads"),
        (["attention.name=nope"], "'nope'", "multihead"),
        (["trainer.devices=0"], "trainer.devices=0", "trainer.devices=1"),
        (["trainer.devices=abc"], "trainer.devices='abc'", "trainer.devices=1"),
        (["trainer.strategy=foo"], "trainer.strategy='foo'", "trainer.strategy=auto"),
        (["model.d_model=33", "attention.num_heads=2"], "model.d_model=33", "one of [1, 3, 11, 33]"),
        (["+model.foo=1"], "model.foo is not a setting", "model.d_model"),
        (["+model.n_layer=1"], "model.n_layer is not a setting", "did you mean model.n_layers?"),
        (["+data.foo=1"], "data.foo is not a setting", "data.batch_size"),
        (["+trainer.max_step=3"], "trainer.max_step is not a setting", "did you mean trainer.max_steps?"),
        (["+optim.foo=1"], "optim.foo is not a setting", "optim.lr"),
        (["+sed=1"], "sed is not a setting", "did you mean seed?"),
        (["model.position=relative"], "model.position='relative'", "model.position=rope"),
        (["model.init=xavier"], "model.init='xavier'", "model.init=gpt2"),
        (["model.mlp_ratio=0"], "model.mlp_ratio=0", "model.mlp_ratio=4"),
        (["model.rope_base=1"], "model.rope_base=1", "model.rope_base=10000.0"),
        (["attention=linear", "model.position=alibi"], "attention=linear does not support", "rope / none"),
        (["model.position=rope", "model.d_model=132", "attention.num_heads=12"], "even head width", "num_heads"),
        (["eval.lengths=[0]"], "eval.lengths=[0]", "eval.lengths=[1,2,4]"),
        (["eval.lengths=[a]"], "eval.lengths=['a']", "eval.lengths=[1,2,4]"),
        (["eval.lengths=2"], "eval.lengths=2", "eval.lengths=[1,2,4]"),
        (["eval.position_buckets=0"], "eval.position_buckets=0", "eval.position_buckets=16"),
        (["+eval.length=[2]"], "eval.length is not a setting", "did you mean eval.lengths?"),
    ],
)
def test_bad_values_name_the_setting_and_a_fix(tmp_path: Path, overrides: list[str], setting: str, fix: str) -> None:
    cfg = make_cfg(tmp_path, overrides)
    with pytest.raises(UserError) as info:
        validate(cfg)
    message = str(info.value)
    assert setting in message and fix in message, message


def test_the_window_advice_uses_the_real_context_length(tmp_path: Path) -> None:
    """The old check built a 16-token layer and advised `window >= 16` whatever the context was."""
    cfg = make_cfg(tmp_path, ["attention=sliding_window", "attention.window=0", "model.context_length=64"])
    with pytest.raises(UserError, match=r"model\.context_length=64"):
        validate(cfg)


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer.val_check_interval=0.5"],
        ["trainer.gradient_clip_val=null"],
        ["data.stride=null", "data.path=null"],
        ["optim.lr=1"],  # an int is a fine float
        ["trainer.devices=auto"],
        ["trainer.devices=[0]"],
        ["trainer.strategy=ddp_spawn"],
        ["attention=sliding_window", "attention.window=1000"],  # wider than the context: plain causal
        ["model.position=rope", "model.rope_base=500000"],  # an int base is a fine float
        ["model.position=alibi", "attention=multihead_wrapper", "eval.lengths=[1,2,4,8]"],
        ["model.position=none", "attention=linear", "eval.lengths=[]"],
    ],
)
def test_good_edge_values_pass(tmp_path: Path, overrides: list[str]) -> None:
    validate(make_cfg(tmp_path, overrides))


def test_ddp_inside_a_sweep_is_refused(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, ["trainer=ddp", "trainer.accelerator=cpu"])
    with pytest.raises(UserError, match="trainer=ddp_spawn"):
        validate(cfg, multirun=True)
    validate(cfg, multirun=False)


@pytest.mark.parametrize(
    ("warmup", "max_steps", "used"), [(30, 300, 30), (30, 10, 1), (30, 30, 3), (0, 5, 0), (5, 1, 1)]
)
def test_warmup_longer_than_the_run_is_clamped(warmup: int, max_steps: int, used: int) -> None:
    assert effective_warmup(warmup, max_steps) == used
