"""The command-line programs: `train.py`, `eval.py` and `align.py` at the repository root, and the
console scripts `treemoe-train`, `treemoe-eval`, `treemoe-align` (`treemoe-export` is
`treemoe_jax.inference.export`). Each parses its flags and calls one library function."""
