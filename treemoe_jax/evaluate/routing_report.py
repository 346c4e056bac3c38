"""Dense, top-k and greedy routing side by side, with how concentrated the gates are.

The paper's future work (sections 4.4.3-4.4.4) runs fewer experts than the committee holds; it is
only worth doing where the gates commit (Fig. 6) and one expert alone aligns well (Fig. 7). This
module turns per-face predictions under each routing into that report, and flags a routing
whose accuracy collapses, so that `eval.py` and `align.py` never return its output silently.

Pure functions of numpy arrays (the evaluator computes them). Axis legend: N faces, K stages,
L experts of one committee.
"""

from collections.abc import Sequence

import numpy as np

from treemoe_jax.nn import gates
from treemoe_jax.nn import routing as routing_lib

# A routing whose NME exceeds dense's by more than this factor on some view is flagged: its
# experts are not good enough alone (issue: greedy within 1.25x of dense on every view).
COLLAPSE_RATIO = 1.25
MASS = 0.9  # Fig. 6: the share of experts that carries this much of the gate mass


def routings_for(learned_experts: Sequence[int]) -> list[str]:
  """What to compare for a model whose learned gates have these expert counts: dense, and where
  a gate has a choice, top-2 (when some gate has more than 2 experts) and greedy."""
  learned = [n for n in learned_experts if n > 1]
  if not learned:
    return ['dense']
  return ['dense'] + (['topk:2'] if max(learned) > 2 else []) + ['greedy']


def cumulative_gate_mass(weights: np.ndarray) -> np.ndarray:
  """Fig. 6's curve [L]: mean over faces of the cumulative sum of gate weights [N, L], sorted down.

  Entry k-1 is the share of the prediction that the k most-weighted experts carry: 1/L, 2/L, ...
  for a uniform gate, all ones for a gate that always picks one expert.
  """
  return np.cumsum(-np.sort(-np.asarray(weights, np.float64), axis=-1), axis=-1).mean(0)


def share_for_mass(cumulative, mass: float = 0.9) -> float:
  """The fewest experts (as a share of all) whose sorted gate weights sum to `mass` on average
  (Fig. 6), from the cumulative sorted gate mass."""
  cumulative = np.asarray(cumulative)
  return float((np.argmax(cumulative >= mass - 1e-9) + 1) / len(cumulative))


def share_of_experts(weights: np.ndarray, mass: float = MASS) -> float:
  """The fewest experts, as a share of L, whose sorted weights carry `mass` of the gate on
  average over faces (Fig. 6): weights [N, L] -> (0, 1]; 1/L for a gate that always commits."""
  return share_for_mass(cumulative_gate_mass(weights), mass)


def experts_in_use(weights: np.ndarray) -> float:
  """exp(entropy of the mean gate over faces) for weights [N, L]: how many experts the faces use
  between them (1 when every face goes to the same expert, L when the load is even).

  Fig. 6's share says how firmly each face commits; this says whether the faces commit to
  different experts (specialists) or all to the same one (a collapse that greedy routing would
  hide: one expert alone is then as good as the mixture).
  """
  load = np.asarray(weights, np.float64).mean(0)
  load = load[load > 0]
  return float(np.exp(-(load * np.log(load)).sum()))


def concentration(weights: np.ndarray) -> dict:
  """Per stage of gate weights [N, K, L]: Fig. 6's share for 90% of the mass, the mean entropy
  (nats; log L is uniform), the mean top-1 weight, the experts in use between the faces
  (experts_in_use) and how many experts are some face's top-1."""
  weights = np.asarray(weights, np.float64)
  stages = range(weights.shape[1])
  return {
      'num_experts': int(weights.shape[-1]),
      'share_for_90': [share_of_experts(weights[:, k]) for k in stages],
      'entropy': [float(np.asarray(gates.gate_entropy(weights[:, k])).mean()) for k in stages],
      'top1_weight': weights.max(-1).mean(0).round(6).tolist(),
      'experts_in_use': [round(experts_in_use(weights[:, k]), 4) for k in stages],
      'top1_experts': [int(np.unique(weights[:, k].argmax(-1)).size) for k in stages],
  }


def compare(nme: dict[str, dict[str, float]], ratio: float = COLLAPSE_RATIO) -> dict:
  """{routing: {view: NME}} (with 'dense') -> ratios to dense per view and the flagged routings.

  A routing is flagged where any view's NME exceeds `ratio` x dense's.
  """
  if 'dense' not in nme:
    raise ValueError(f'the comparison needs dense routing, got {sorted(nme)}')
  dense = nme['dense']
  ratios = {r: {v: float(nme[r][v] / dense[v]) for v in dense} for r in nme if r != 'dense'}
  flagged = {r: sorted(v for v, x in by_view.items() if x > ratio)
             for r, by_view in ratios.items()}
  return {'nme': nme, 'ratio_to_dense': ratios, 'collapse_ratio': ratio,
          'flagged': {r: views for r, views in flagged.items() if views}}


def warning(report: dict) -> list[str]:
  """One sentence per flagged routing, for results.md and align.py's output (empty if none)."""
  lines = []
  for routing, views in report.get('flagged', {}).items():
    worst = max(report['ratio_to_dense'][routing].values())
    lines.append(f'WARNING: {routing} routing is up to {worst:.1f}x the dense NME '
                 f'({", ".join(views)}): its experts are not accurate alone; use dense routing.')
  return lines


def markdown(report: dict) -> list[str]:
  """The routing section of results.md: NME per view under each routing, ratios, gates."""
  views = list(report['nme']['dense'])
  lines = ['## Routing: which experts run (sections 4.4.3-4.4.4)', '',
           '| routing | ' + ' | '.join(views) + ' | worst / dense |',
           '|---' * (len(views) + 2) + '|']
  for routing, by_view in report['nme'].items():
    worst = max(report['ratio_to_dense'][routing].values()) if routing != 'dense' else 1.0
    lines.append(f'| {routing} | ' + ' | '.join(f'{100 * by_view[v]:.2f}' for v in views)
                 + f' | {worst:.2f}x |')
  if report.get('stage_top1'):
    lines.append('| top-1 path per stage, from dense s(k) (Fig. 7) | ' + ' | '.join(
        ' > '.join(f'{100 * x:.2f}' for x in report['stage_top1'][v]) for v in views) + ' | |')
  lines.append('')
  for layer, stats in report.get('concentration', {}).items():
    share = ', '.join(f'{100 * s:.0f}%' for s in stats['share_for_90'])
    entropy = ', '.join(f'{e:.2f}' for e in stats['entropy'])
    used = ''
    if 'experts_in_use' in stats:
      used = ('; the faces use ' + ', '.join(f'{u:.1f}' for u in stats['experts_in_use'])
              + ' experts between them (exp of the mean gate\'s entropy), '
              + ', '.join(map(str, stats['top1_experts'])) + ' of them some face\'s top-1')
    lines.append(f'- {layer} gate ({stats["num_experts"]} experts), per stage: 90% of the mass '
                 f'on {share} of the experts; entropy {entropy} nats '
                 f'(uniform {np.log(stats["num_experts"]):.2f}){used}.')
  lines += ['', *warning(report)]
  return lines + ([''] if warning(report) else [])


def parse_routings(text: str) -> list[str]:
  """'dense,greedy,topk:2' -> canonical names, dense first (each checked by routing.parse)."""
  names = [str(routing_lib.parse(t)) for t in text.split(',') if t.strip()]
  return ['dense'] + [n for n in dict.fromkeys(names) if n != 'dense']
