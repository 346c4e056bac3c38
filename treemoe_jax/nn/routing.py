"""Routing at inference: which experts of a committee run (paper sections 4.4.3-4.4.4).

`dense` runs every expert and weighs them by the gate (the paper). `topk:K` runs exactly the K
experts the gate weighs most, their weights renormalised. `greedy` descends a tree gate from the
root to the more probable child at each node (the paper's reference [4]) and runs that one leaf's
expert; on a softmax gate, which has no tree, it is `topk:1`. Uniform gates (plain MoE, baseline)
prefer no expert, so they always run dense.

Only the selected experts are computed: `experts.ExpertCNNs` / `ExpertMLPs` gather the chosen
experts' parameters per example and evaluate K experts, not L.

Axis legend: B batch, L experts, A experts a routing runs (the K of `topk:K`), I internal tree
nodes.
"""

import dataclasses

import jax


@dataclasses.dataclass(frozen=True)
class Routing:
  """kind 'dense' | 'topk' | 'greedy'; k experts for 'topk' (1 for greedy, 0 for dense)."""
  kind: str = 'dense'
  k: int = 0

  def __str__(self) -> str:
    return f'topk:{self.k}' if self.kind == 'topk' else self.kind


DENSE = Routing()


def parse(routing: 'str | Routing') -> Routing:
  """'dense', 'greedy' or 'topk:K' (K >= 1) -> Routing; ValueError with the valid forms."""
  if isinstance(routing, Routing):
    return routing
  text = str(routing).strip().lower()
  if text == 'dense':
    return DENSE
  if text == 'greedy':
    return Routing('greedy', 1)
  if text.startswith('topk:'):
    try:
      k = int(text.removeprefix('topk:'))
    except ValueError:
      k = 0
    if k >= 1:
      return Routing('topk', k)
  raise ValueError(f"unknown routing {routing!r}: use 'dense', 'greedy' or 'topk:K' with K >= 1")


def select(weights: jax.Array, routing: Routing, node_logits: jax.Array | None = None
           ) -> tuple[jax.Array, jax.Array] | None:
  """The experts to run: (indices int32 `[B, A]`, weights `[B, A]` summing to 1), or None = all.

  `weights` `[B, L]` are the gate's; `node_logits` `[B, I]` a tree gate's node logits (greedy).
  K >= L selects every expert, which is dense (None). Ties go to the lowest index (lax.top_k).
  """
  num_experts = weights.shape[-1]
  if routing.kind == 'dense':
    return None
  if routing.kind == 'greedy' and node_logits is not None:
    from treemoe_jax.nn import gates  # pylint: disable=g-import-not-at-top (Flax; parse() needs none)
    leaf = gates.greedy_leaf(node_logits)[..., None]  # [B, 1]
    return leaf, jax.numpy.ones(leaf.shape, weights.dtype)
  k = 1 if routing.kind == 'greedy' else routing.k
  if k >= num_experts:
    return None
  kept, chosen = jax.lax.top_k(weights, k)  # [B, A], largest first
  return chosen, kept / kept.sum(-1, keepdims=True)


# What eval.py measured of each routing against dense (evaluate.routing_report), beside its
# results.json: the Aligner and the export read it, so that a routing whose accuracy collapses
# is never used silently.
CHECK_FILE = 'routing_check.json'


def check_record(report: dict, *, step: int, split: str) -> dict:
  """The small record of a routing report that inference reads (`warning_for`)."""
  ratios = report['ratio_to_dense']
  return {'checkpoint_step': int(step), 'split': split,
          'collapse_ratio': report['collapse_ratio'],
          'worst_ratio_to_dense': {r: max(by_view.values()) for r, by_view in ratios.items()},
          'flagged': sorted(report['flagged'])}


def warning_for(check: dict | None, routing: 'str | Routing', step: int | None = None,
                where: str = 'the model') -> str | None:
  """None for dense or a routing measured within the collapse ratio; else a sentence saying
  that `routing` collapsed, or that nobody measured it for this model (`step`: the model's)."""
  name = str(parse(routing))
  if name == 'dense':
    return None
  measured = (check or {}).get('worst_ratio_to_dense', {})
  if name not in measured:
    return (f'{name} routing has not been measured against dense for {where}: run '
            f'`python eval.py --workdir WORKDIR --compare_routings {name}` before trusting it')
  stale = (f' (measured at step {check["checkpoint_step"]}; the model is at step {step})'
           if step is not None and step != check['checkpoint_step'] else '')
  if measured[name] > check['collapse_ratio']:
    return (f'{name} routing measured at {measured[name]:.1f}x the dense NME on the '
            f'{check["split"]} views{stale}: its experts are not accurate alone; use dense')
  if stale:
    return f'{name} routing was within {check["collapse_ratio"]}x of dense{stale}'
  return None
