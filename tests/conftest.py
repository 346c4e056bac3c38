"""Shared test set-up.

Tests run on JAX's default PRNG, the one `train.py` uses: bitwise resume and device-count
equality must hold for what users run, not for a faster test-only generator.
"""

from hypothesis import settings

# Fuzz tests draw the same examples on every run: CI is not where a new failure should first
# appear by chance (run with --hypothesis-profile=explore to search afresh).
settings.register_profile('ci', derandomize=True, database=None, deadline=None)
settings.register_profile('explore', database=None, deadline=None)
settings.load_profile('ci')
