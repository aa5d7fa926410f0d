"""Experiments built on train + evaluate: the demo and ablation sweeps."""
