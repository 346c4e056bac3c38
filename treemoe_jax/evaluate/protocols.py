"""Evaluation protocols of section 4 as data: which faces, which normaliser, how columns combine.

A `Subset` is one set of test faces: a TFDS dataset and split, a normaliser, and optionally a
landmark mapping (COFW's 29 points from our 68) and a filter on the ground-truth |yaw|
(AFLW2000-3D's buckets). A `Protocol` is a named list of subsets plus `Aggregate` columns built
from them, in the order of the paper's table:
  - 'union': the subsets' faces pooled and every metric recomputed from the per-image errors
    (Table 2's 'full' = common + challenging; not a mean of means, which would weigh 554 common
    and 135 challenging faces equally);
  - 'mean': the mean of the subsets' metric values (Table 3's mean over the yaw buckets, which
    the paper takes so that the 1306 frontal faces do not dominate).

The real protocols (`table1`, `table2`, `table3`) name the TFDS builders `w300`, `cofw` and
`aflw2000_3d` (SPEC); they run as soon as those builders exist. The `synthetic_*` protocols are
the same tables on the `synthetic_faces` test views, and run anywhere. A dataset given without a
builder config ('synthetic_faces') takes the evaluated run's own ('synthetic_faces/small' for a
run trained on it), so a run is tested on views rendered like its training set.

Letters: P = 68 landmarks, Q landmarks of a mapped markup (29 for COFW).
"""

import dataclasses
import enum
import math

import numpy as np

from input_pipeline import synthetic_splits
from treemoe_jax import metrics
from treemoe_jax.geometry.markup import COFW_29, LandmarkMap  # noqa: F401 (re-exported)


@dataclasses.dataclass(frozen=True)
class Subset:
  """One column's faces: `split` of `dataset`, errors normalised by `normalizer`."""
  name: str
  dataset: str  # TFDS name, 'name' or 'name/config' (a bare name takes the run's config)
  split: str
  normalizer: str  # one of metrics.NORMALIZERS
  landmarks: LandmarkMap | None = None  # evaluate in another markup (COFW's 29 points)
  abs_yaw_deg: tuple[float, float] | None = None  # keep faces with lo <= |true yaw| < hi

  def __post_init__(self):
    if self.normalizer not in metrics.NORMALIZERS:
      raise ValueError(f'subset {self.name!r}: unknown normalizer {self.normalizer!r}; valid: '
                       f'{", ".join(metrics.NORMALIZERS)}')
    if self.abs_yaw_deg is not None and not 0 <= self.abs_yaw_deg[0] < self.abs_yaw_deg[1]:
      raise ValueError(f'subset {self.name!r}: abs_yaw_deg must be 0 <= lo < hi, '
                       f'got {self.abs_yaw_deg}')

  @property
  def builder_name(self) -> str:
    return self.dataset.split('/')[0]

  def keep(self, true_pose: np.ndarray) -> np.ndarray:
    """[N] bool: the faces of the evaluated split (true pose [N, 3] radians) in this subset."""
    if self.abs_yaw_deg is None:
      return np.ones(len(true_pose), bool)
    yaw = np.abs(np.degrees(true_pose[:, 0]))
    lo, hi = self.abs_yaw_deg
    return (yaw >= lo) & (yaw < hi)


class AggregateKind(str, enum.Enum):
  UNION = 'union'  # pool the per-image errors, then compute every metric
  MEAN = 'mean'  # mean of the parts' metric values


@dataclasses.dataclass(frozen=True)
class Aggregate:
  name: str
  kind: AggregateKind
  parts: tuple[str, ...]  # subset names


@dataclasses.dataclass(frozen=True)
class Protocol:
  """A paper table: its subsets, derived columns, column order, and the subset the figures use.

  `figure_subset` is the paper's choice for Fig. 6 and 7 (I-BUG, AFLW2000-3D's large poses).
  """
  name: str
  description: str
  subsets: tuple[Subset, ...]
  aggregates: tuple[Aggregate, ...] = ()
  columns: tuple[str, ...] | None = None  # default: subsets, then aggregates
  figure_subset: str | None = None  # default: the last subset

  def __post_init__(self):
    names = [s.name for s in self.subsets]
    if len(set(names)) != len(names) or not names:
      raise ValueError(f'protocol {self.name!r}: subset names must be unique and non-empty')
    for aggregate in self.aggregates:
      missing = set(aggregate.parts) - set(names)
      if missing or not aggregate.parts:
        raise ValueError(f'protocol {self.name!r}: aggregate {aggregate.name!r} names unknown '
                         f'subsets {sorted(missing)}')
    known = set(names) | {a.name for a in self.aggregates}
    if self.columns is not None and not set(self.columns) <= known:
      raise ValueError(f'protocol {self.name!r}: columns {self.columns} not all among {known}')
    if self.figure_subset is not None and self.figure_subset not in names:
      raise ValueError(f'protocol {self.name!r}: figure_subset {self.figure_subset!r} unknown')

  @property
  def column_names(self) -> tuple[str, ...]:
    return self.columns or tuple(s.name for s in self.subsets) + tuple(
        a.name for a in self.aggregates)

  @property
  def figure_subset_name(self) -> str:
    return self.figure_subset or self.subsets[-1].name

  @property
  def builders(self) -> tuple[str, ...]:
    return tuple(dict.fromkeys(s.builder_name for s in self.subsets))


def _yaw_buckets(dataset: str, normalizer: str, split_of=None) -> tuple[Subset, ...]:
  """AFLW2000-3D's |yaw| buckets [0, 30), [30, 60), [60, 90] deg (90 and beyond in the last)."""
  buckets = ((0, 30), (30, 60), (60, math.inf))
  return tuple(
      Subset(f'yaw_{lo}_{min(hi, 90)}', dataset,
             split_of(lo, hi) if split_of else 'test', normalizer,
             abs_yaw_deg=None if split_of else (lo, hi))
      for lo, hi in buckets)


_YAW_MEAN = Aggregate('mean', AggregateKind.MEAN, ('yaw_0_30', 'yaw_30_60', 'yaw_60_90'))

# --- The paper's tables (section 4.1-4.3). 300W and COFW: inter-pupil (eq. 12); AFLW2000-3D:
# sqrt(w * h) of the ground-truth box (eq. 13). ---

_LFPW = Subset('lfpw', 'w300', 'lfpw_test', 'inter_pupil')
_HELEN = Subset('helen', 'w300', 'helen_test', 'inter_pupil')
_IBUG = Subset('ibug', 'w300', 'ibug', 'inter_pupil')
_COFW = Subset('cofw', 'cofw', 'test', 'inter_pupil', landmarks=COFW_29)

TABLE1 = Protocol(
    'table1', 'Table 1: architectures on 300W (LFPW, HELEN test; IBUG) and COFW, NME inter-pupil '
    '(COFW: predictions mapped to its 29 points, normalised by its pupils 16, 17)',
    subsets=(_LFPW, _HELEN, _IBUG, _COFW), figure_subset='ibug')


def _inter_ocular(subset: Subset) -> Subset:
  return dataclasses.replace(subset, name=f'{subset.name}_io', normalizer='inter_ocular')


_CHALLENGING = dataclasses.replace(_IBUG, name='challenging')
TABLE2 = Protocol(
    'table2', 'Table 2: 300W common (LFPW + HELEN test), challenging (IBUG), full, and COFW, '
    'NME inter-pupil as in the paper; *_io columns: inter-ocular (outer eye corners 36, 45), as '
    'recent papers report',
    subsets=(_LFPW, _HELEN, _CHALLENGING, _COFW, *map(_inter_ocular, (_LFPW, _HELEN,
                                                                      _CHALLENGING))),
    aggregates=(Aggregate('common', AggregateKind.UNION, ('lfpw', 'helen')),
                Aggregate('full', AggregateKind.UNION, ('lfpw', 'helen', 'challenging')),
                Aggregate('common_io', AggregateKind.UNION, ('lfpw_io', 'helen_io')),
                Aggregate('full_io', AggregateKind.UNION,
                          ('lfpw_io', 'helen_io', 'challenging_io'))),
    columns=('common', 'challenging', 'full', 'cofw', 'common_io', 'challenging_io', 'full_io'),
    figure_subset='challenging')

TABLE3 = Protocol(
    'table3', 'Table 3: AFLW2000-3D by |yaw| bucket and the mean of the buckets, NME box (buckets '
    'from the builder: Pose_Para yaw by default, 1312/383/305 faces; AFLW\'s original labels via '
    'its pose_file config, the paper\'s 1306/462/232)',
    subsets=_yaw_buckets('aflw2000_3d', 'box',
                         split_of=lambda lo, hi: f'test_yaw_{lo}_{min(hi, 90)}'),
    aggregates=(_YAW_MEAN,), figure_subset='yaw_60_90')

# --- The same tables on synthetic_faces' test views. Every column uses the box normaliser: at
# the large-pose view's |yaw| >= 45 deg the pupils close up and an inter-pupil NME explodes. ---

_S = 'synthetic_faces'
_FRONTAL = Subset('frontal', _S, 'test_frontal', 'box')  # 300W common
_LARGE_POSE = Subset('large_pose', _S, 'test_large_pose', 'box')  # IBUG
_OCCLUDED = Subset('occluded', _S, 'test_occluded', 'box')  # COFW

SYNTHETIC_TABLE1 = Protocol(
    'synthetic_table1', 'Table 1 on synthetic_faces: frontal, large pose, occluded views, NME box',
    subsets=(_FRONTAL, _LARGE_POSE, _OCCLUDED), figure_subset='large_pose')

SYNTHETIC_TABLE2 = Protocol(
    'synthetic_table2', 'Table 2 on synthetic_faces: common = frontal, challenging = large pose, '
    'full = both pooled, and occluded, NME box',
    subsets=(dataclasses.replace(_FRONTAL, name='common'),
             dataclasses.replace(_LARGE_POSE, name='challenging'), _OCCLUDED),
    aggregates=(Aggregate('full', AggregateKind.UNION, ('common', 'challenging')),),
    columns=('common', 'challenging', 'full', 'occluded'), figure_subset='challenging')

SYNTHETIC_TABLE3 = Protocol(
    'synthetic_table3', 'Table 3 on synthetic_faces: |yaw| bucket views and their mean, NME box',
    subsets=_yaw_buckets(_S, 'box', split_of=lambda lo, hi: f'test_yaw_{lo}_{min(hi, 90)}'),
    aggregates=(_YAW_MEAN,), figure_subset='yaw_60_90')

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    TABLE1, TABLE2, TABLE3, SYNTHETIC_TABLE1, SYNTHETIC_TABLE2, SYNTHETIC_TABLE3)}

# What `eval.py` runs unless told otherwise (config.eval_protocol): every synthetic column of
# Tables 1 and 3, which together span the pose range Fig. 5 needs.
DEFAULT = ('synthetic_table1', 'synthetic_table3')


def get(name: str) -> Protocol:
  if name not in PROTOCOLS:
    raise ValueError(f'unknown protocol {name!r}; valid: {", ".join(PROTOCOLS)}')
  return PROTOCOLS[name]


def parse(names: str | Protocol | tuple | list) -> tuple[Protocol, ...]:
  """'a,b' or ['a', 'b'] or Protocol objects -> protocols, in order."""
  if isinstance(names, (str, Protocol)):
    names = [names]
  out = []
  for item in names:
    if isinstance(item, Protocol):
      out.append(item)
    else:
      out.extend(get(n.strip()) for n in item.split(',') if n.strip())
  if not out:
    raise ValueError('no protocol given')
  return tuple(out)


def on_split(protocol: Protocol, split: str) -> Protocol:
  """`protocol` read on the 'test' faces (as defined) or on their 'validation' twins.

  Only synthetic_faces has validation views of the test views (synthetic_splits.view_split); a
  real dataset's validation faces are a face_folder list file, evaluated as their own dataset.
  """
  if split == 'test':
    return protocol
  subsets = []
  for subset in protocol.subsets:
    if subset.builder_name != 'synthetic_faces':
      raise ValueError(f'protocol {protocol.name!r} reads {subset.dataset}:{subset.split}, which '
                       f'has no {split} faces: only the synthetic_* protocols have {split} views')
    subsets.append(dataclasses.replace(subset,
                                       split=synthetic_splits.view_split(subset.split, split)))
  return dataclasses.replace(protocol, subsets=tuple(subsets))


def resolve_dataset(dataset: str, run_dataset: str) -> str:
  """A subset's dataset as TFDS loads it: a bare name takes the run's builder config."""
  if '/' in dataset:
    return dataset
  name, _, config = run_dataset.partition('/')
  return f'{dataset}/{config}' if name == dataset and config else dataset


def missing_builders(protocols: tuple[Protocol, ...], available: tuple[str, ...]
                     ) -> tuple[str, ...]:
  """The TFDS builders the protocols need and this checkout does not register."""
  needed = dict.fromkeys(b for p in protocols for b in p.builders)
  return tuple(b for b in needed if b not in available)
