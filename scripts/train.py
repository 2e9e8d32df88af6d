"""Train a GPT with the attention variant of your choice (the same as `attention-lab train`).

python scripts/train.py attention=gqa attention.num_kv_heads=1
python scripts/train.py -m attention=multihead,gqa attention.num_heads=2,4
"""

import sys

from attention_lab.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
