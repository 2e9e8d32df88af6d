"""Lightning loop vs a hand-written loop, same model and batches (see attention_lab.loop_overhead).

python scripts/benchmark_loop.py --repeats 5 --out benchmarks/results/cpu/loop_overhead.json
"""

import argparse

from attention_lab.loop_overhead import compare

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--repeats", type=int, default=5)
parser.add_argument("--warmup", type=int, default=10)
parser.add_argument("--steps", type=int, default=60)
parser.add_argument("--batch-size", type=int, default=16)
parser.add_argument("--out", default="benchmarks/results/cpu/loop_overhead.json")
args = parser.parse_args()
result = compare(args.repeats, args.warmup, args.steps, args.batch_size, args.out)
for hand, lit, ratio in zip(
    result["hand_tokens_per_sec"], result["lightning_tokens_per_sec"], result["ratio_per_pair"], strict=True
):
    print(f"hand {hand:9,.0f} tok/s   lightning {lit:9,.0f} tok/s   ratio {ratio:.3f}")
print(
    f"median ratio {result['median_ratio']:.3f} (median hand {result['median_hand']:,.0f}, "
    f"lightning {result['median_lightning']:,.0f} tokens/s) -> {args.out}"
)
