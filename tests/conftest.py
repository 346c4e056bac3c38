"""Shared test set-up.

Tests run on JAX's default PRNG, the one `train.py` uses: bitwise resume and device-count
equality must hold for what users run, not for a faster test-only generator.
"""
