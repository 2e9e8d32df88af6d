"""Benchmarks: what the attention variants cost, measured so that the numbers can be trusted and compared.

attention   time and activation memory of each attention module against the sequence length
generation  greedy tokens/s with and without the KV cache (and `timed_generate`, `compare_cache`)
loop        tokens/s of Lightning's `Trainer.fit` against a hand-written training loop
positions   training-step time of each position scheme (learned, sinusoidal, rope, alibi) against none
machine     the one description of the machine, stored in every result
timing      the clock (`timed`), the summary (`summarize`) and the interleaving (`round_robin`) they share
results     where results go (a new folder per run unless `--out`) and the JSON/CSV writers
plots       the figures: the attention benchmark's log-log one, the positions benchmark's ratios

The command line is `attention-lab bench {attention,generation,loop,positions}` (`attention_lab.cli.bench`).
"""
