"""The config check of the recall probes (data=mqar, data=induction): settings by `data._target_`, joint rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from attention_lab.config import validate
from attention_lab.errors import UserError
from tests.training.helpers import make_cfg


@pytest.mark.parametrize("probe", ["mqar", "induction"])
def test_the_probe_defaults_are_valid(tmp_path: Path, probe: str) -> None:
    validate(make_cfg(tmp_path, [f"data={probe}"]))


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (["data=mqar", "data.num_pairs=40"], ["data.num_pairs=40", "160 tokens", "data.num_pairs=32"]),
        (["data=mqar", "data.vocab_size=1"], ["data.vocab_size=1 is not valid", "data.vocab_size=128"]),
        (["data=mqar", "data.vocab_size=10", "data.num_pairs=8"], ["data.vocab_size=10", "data.vocab_size=18"]),
        (["data=mqar", "data.num_queries=0"], ["data.num_queries=0 is not valid", "data.num_queries=8"]),
        (["data=induction", "data.vocab_size=32"], ["data.vocab_size=32", "data.vocab_size=64 or more"]),
        (["data=mqar", "+data.path=corpus.txt"], ["data.path is not a setting"]),
        (["data=induction", "+data.num_pairs=4"], ["data.num_pairs is not a setting"]),
        (["data=mqar", "eval.lengths=[1,2]"], ["eval.lengths=[1, 2] is not applicable", "eval.lengths=[]"]),
    ],
)
def test_probe_settings_that_cannot_work_are_refused_with_the_fix(
    tmp_path: Path, overrides: list[str], names: list[str]
) -> None:
    with pytest.raises(UserError) as err:
        validate(make_cfg(tmp_path, overrides))
    assert all(name in str(err.value) for name in names), str(err.value)


def test_text_settings_still_belong_to_text_data(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"data\.num_pairs is not a setting"):
        validate(make_cfg(tmp_path, ["+data.num_pairs=4"]))
