"""treemoe-jax: Tree-gated Deep Mixture-of-Experts for pose-robust face alignment, in JAX/Flax.

Importing the package loads JAX and Flax only (no TensorFlow): the gates, expert committees,
patch extraction and cascade are plain Flax modules for use in other models.
"""

from treemoe_jax import cascade
from treemoe_jax import experts
from treemoe_jax import gates
from treemoe_jax import geometry
from treemoe_jax import models
from treemoe_jax import patches
from treemoe_jax import pose

__version__ = '0.1.0'
