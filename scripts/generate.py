"""Sample text from a trained checkpoint (a thin wrapper of `attention-lab generate`, same flags).

    python scripts/generate.py --ckpt outputs/runs/<run>/checkpoints/last.ckpt --prompt "The "
    python scripts/generate.py --ckpt ... --temperature 0 --compare-cache   # cached == uncached? tokens/s of both
    python scripts/generate.py --ckpt ... --device auto --top-k 0 --temperature 1.0 --seed 3
    python scripts/generate.py --ckpt ... --no-cache --max-new-tokens 300

Exit status 2, with one `error:` line on stderr, for a missing or corrupt checkpoint, a bad flag value, a
prompt the tokenizer cannot encode or a device that is not here. The command lives in
`attention_lab.cli.generate` (`--help` for every flag); this file only calls it. The generation speed
benchmark is `attention-lab bench generation`.
"""

import sys

from attention_lab.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())
