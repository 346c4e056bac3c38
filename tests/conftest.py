"""Shared test set-up."""

import jax

# XLA:CPU compiles threefry's hash rounds slowly (about 2x the whole tiny model's init); the
# tests only need independent streams, which rbg gives at half the compile time.
jax.config.update('jax_default_prng_impl', 'rbg')
