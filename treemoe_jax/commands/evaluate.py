"""Evaluates trained workdirs on the paper's protocols (`treemoe_jax.evaluate.evaluate_workdir`).

  python eval.py --workdir /tmp/ptm                                # results.json/.md + figures
  python eval.py --workdir /tmp/ptm --protocol synthetic_table2    # another table
  python eval.py --workdir /tmp/ptm --split validation             # where choices are made
  python eval.py --workdir /tmp/ptm --workdir /tmp/psm --out /tmp/cmp   # runs side by side

The workdir's config.json is the truth about the model; `--config` only supplies
`config.eval_protocol` when `--protocol` is not given. Protocols: treemoe_jax/protocols.py.
"""

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from input_pipeline import pipeline
from treemoe_jax import cli
from treemoe_jax.evaluate import evaluator as evaluate
from treemoe_jax.evaluate import protocols
from treemoe_jax.evaluate import reports

_CONFIG = config_flags.DEFINE_config_file('config', None, 'configs/<exp>.py[:variant] (optional)',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_multi_string('workdir', None, 'Trained workdir; repeat to compare runs.')
_PROTOCOL = flags.DEFINE_string(
    'protocol', None, f'Comma-separated, of {", ".join(protocols.PROTOCOLS)}; default: '
    f'config.eval_protocol, else {",".join(protocols.DEFAULT)}.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data_dir (default: the run\'s).')
_MANUAL_DIR = flags.DEFINE_string(
    'manual_dir', None, 'Where the downloaded datasets are (w300/, cofw/, aflw2000_3d/ ...; '
    'default: TFDS\'s DATA_DIR/downloads/manual); needed once, to prepare them.')
_OUT = flags.DEFINE_string('out', None, 'Output folder (default: the workdir; several: '
                           'WORKDIR0/comparison).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', None, 'Global eval batch (default: the run\'s).')
_FIGURES = flags.DEFINE_bool('figures', True, 'Draw the CED curves and Fig. 5-7.')
_ROUTING = flags.DEFINE_string(
    'routing', 'dense', "Which experts run: 'dense' (the paper), 'topk:K' or 'greedy' "
    '(only those are computed; treemoe_jax/routing.py).')
_COMPARE_ROUTINGS = flags.DEFINE_string(
    'compare_routings', 'auto',
    "Routings run beside dense on every view, with the gates' concentration and Fig. 7 per "
    "stage: 'auto' (top-2 and greedy where the model has learned gates), a list such as "
    "'greedy,topk:4', or '' for none. A routing over 1.25x dense's NME is flagged.")
_SPLIT = flags.DEFINE_enum(
    'split', 'test', ['test', 'validation'],
    "Which faces: 'test' (the final tables) or 'validation' (the synthetic protocols' validation "
    'views: where choices are made, docs/learning.md).')
_DISTRIBUTED = flags.DEFINE_bool('distributed', False, 'jax.distributed.initialize() from env.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  pipeline.run_ops_on_one_thread()  # before TensorFlow starts: tf.data's map is the parallelism
  protocol = _PROTOCOL.value or (_CONFIG.value.get('eval_protocol') if _CONFIG.value else None)
  common = dict(data_dir=_DATA_DIR.value, manual_dir=_MANUAL_DIR.value,
                batch_size=_BATCH_SIZE.value, figures=_FIGURES.value, routing=_ROUTING.value,
                split=_SPLIT.value, compare_routings=_COMPARE_ROUTINGS.value)
  if len(_WORKDIR.value) == 1:
    results = evaluate.evaluate_workdir(_WORKDIR.value[0], protocol, out=_OUT.value, **common)
    text = reports.markdown(results)
  else:
    out = _OUT.value or f'{_WORKDIR.value[0]}/comparison'
    text = evaluate.compare(_WORKDIR.value, protocol, out=out, **common)
  if jax.process_index() == 0:
    print(text)


def run():
  """The console script `treemoe-eval`."""
  app.run(main, flags_parser=cli.flags_parser)


if __name__ == '__main__':
  run()
