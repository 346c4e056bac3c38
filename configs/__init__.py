"""Experiment configs: `get_config(variant)` per file, shared fields in `default.py`."""
