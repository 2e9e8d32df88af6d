"""Hydra configs, shipped inside the package so `attention-lab train` finds them wherever it is installed."""
