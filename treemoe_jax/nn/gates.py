"""Gates: how much each expert of a committee counts (paper section 3.4).

Every gate maps features `[..., F]` to expert weights `[..., L]` that are non-negative and sum
to 1 over the L experts.

Axis legend: F gate input features, L experts (leaves), I = 2**D - 1 internal tree nodes,
D tree depth.

Tree layout (SPEC): internal nodes in heap (breadth-first) order, node n has children 2n+1
(left) and 2n+2 (right); `d_n = sigmoid(logit_n)` is the probability of going *left*; leaves
are numbered left to right.
"""

import enum

import flax.linen as nn
import jax
import jax.numpy as jnp


class GateKind(str, enum.Enum):
  """The three gates of Fig. 3; `uniform` with one expert is the baseline's g = 1."""
  UNIFORM = 'uniform'
  SOFTMAX = 'softmax'
  TREE = 'tree'


def tree_depth(num_nodes: int) -> int:
  """D such that a complete binary tree of depth D has `num_nodes` = 2**D - 1 internal nodes."""
  depth = (num_nodes + 1).bit_length() - 1
  if num_nodes < 1 or 2**depth - 1 != num_nodes:
    raise ValueError(
        f'a complete binary tree has 2**D - 1 internal nodes (1, 3, 7, 15, ...); got {num_nodes}')
  return depth


@jax.jit
def tree_leaf_log_probs(logits: jax.Array) -> jax.Array:
  """log mu_l (eq. 10) for node logits `[..., I]` -> `[..., 2**D]`.

  Computed in log space (log d = log_sigmoid(z), log(1-d) = log_sigmoid(-z)) so that saturated
  nodes (|z| ~ 1e4) give exact zeros, never 0 * inf. Vectorised over the leaves: one step per
  depth level doubles the frontier, each node's two children interleaved so that leaves stay in
  left-to-right order.
  """
  depth = tree_depth(logits.shape[-1])
  log_left, log_right = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
  frontier = jnp.zeros(logits.shape[:-1] + (1,), logits.dtype)  # [..., 2**k] at level k
  for level in range(depth):
    nodes = slice(2**level - 1, 2**(level + 1) - 1)  # the level's nodes, left to right
    children = jnp.stack([frontier + log_left[..., nodes], frontier + log_right[..., nodes]], -1)
    frontier = children.reshape(logits.shape[:-1] + (2**(level + 1),))
  return frontier


@jax.jit
def tree_leaf_probs(logits: jax.Array) -> jax.Array:
  """Leaf probabilities mu (eq. 10-11) for node logits `[..., 2**D - 1]` -> `[..., 2**D]`."""
  return jnp.exp(tree_leaf_log_probs(logits))


class TreeGate(nn.Module):
  """Soft binary neural tree of depth D (eq. 9-11): one neuron per internal node.

  `node_logits` exposes z_n (d_n = sigmoid(z_n)) for greedy descent at inference (routing.py).
  """
  depth: int

  def setup(self):
    if self.depth < 1:
      raise ValueError(f'TreeGate depth must be >= 1, got {self.depth}')
    self.nodes = nn.Dense(2**self.depth - 1)  # params under 'nodes', as before

  def node_logits(self, x: jax.Array) -> jax.Array:
    """`[..., F]` -> z `[..., I]` in heap order."""
    return self.nodes(x)

  def __call__(self, x: jax.Array) -> jax.Array:
    return tree_leaf_probs(self.node_logits(x))


@jax.jit
def greedy_leaf(logits: jax.Array) -> jax.Array:
  """The leaf reached by descending from the root to the more probable child (int32 `[...]`).

  Node n goes left when d_n = sigmoid(z_n) >= 1/2, i.e. z_n >= 0 (a tie goes left). Leaf index
  bits read left (0) / right (1) from the root down, as leaves are numbered left to right.
  """
  depth = tree_depth(logits.shape[-1])
  node = jnp.zeros(logits.shape[:-1], jnp.int32)  # heap index at the current level
  for _ in range(depth):
    go_right = (jnp.take_along_axis(logits, node[..., None], -1)[..., 0] < 0).astype(jnp.int32)
    node = 2 * node + 1 + go_right
  return node - (2**depth - 1)


class SoftmaxGate(nn.Module):
  """g(x) = softmax(W x + b) over L experts (eq. 8)."""
  num_experts: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.softmax(nn.Dense(self.num_experts, name='logits')(x), axis=-1)


class UniformGate(nn.Module):
  """g = (1/L, ..., 1/L) whatever the input: the plain MoE, and with L = 1 the baseline."""
  num_experts: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.full(x.shape[:-1] + (self.num_experts,), 1.0 / self.num_experts, x.dtype)


def make_gate(kind: GateKind | str, num_experts: int, depth: int | None = None,
              name: str | None = None) -> nn.Module:
  """The gate of `kind` for `num_experts` experts; a tree's depth must give one leaf per expert."""
  kind = GateKind(kind)
  if num_experts < 1:
    raise ValueError(f'a committee needs at least one expert, got {num_experts}')
  match kind:
    case GateKind.UNIFORM:
      return UniformGate(num_experts, name=name)
    case GateKind.SOFTMAX:
      return SoftmaxGate(num_experts, name=name)
    case GateKind.TREE:
      if depth is None or depth < 1 or 2**depth != num_experts:
        raise ValueError(f'a tree gate of depth {depth} has {2**depth if depth else "no"} leaves, '
                         f'but the committee has {num_experts} experts: one leaf per expert '
                         f'needs depth log2({num_experts})')
      return TreeGate(depth, name=name)


def gate_entropy(weights: jax.Array) -> jax.Array:
  """Entropy (nats) of gate weights `[..., L]`: 0 = one expert decides, log L = uniform."""
  return -jnp.sum(jnp.where(weights > 0, weights * jnp.log(jnp.where(weights > 0, weights, 1.0)),
                            0.0), axis=-1)
