"""Train a GPT with the attention variant of your choice.

python scripts/train.py attention=gqa attention.num_kv_heads=1
python scripts/train.py -m attention=multihead,gqa attention.num_heads=2,4
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from attention_lab.train import main as train_main

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    return train_main(cfg)


if __name__ == "__main__":
    main()
