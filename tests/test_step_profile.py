"""benchmarks/step_profile.py: op names read from HLO, parts named, and a real trace attributed."""

import gzip
import json

from flax import linen as nn
import jax
import jax.numpy as jnp
import optax

from benchmarks import step_profile


def test_part_of_reads_the_model_path_through_jax_transforms():
  name = 'jit(train_step)/transpose(jvp(FaceAligner))/cascade/stage2/representation/conv'
  assert step_profile.part_of(name) == ('cascade/representation', 'backward')
  assert step_profile.part_of('jit(train_step)/jvp(FaceAligner)/pose_estimator/stem/conv') == (
      'pose_estimator', 'forward')
  assert step_profile.part_of('jit(train_step)/add') == (step_profile.OUTSIDE, 'forward')
  assert step_profile.part_of(None) == (step_profile.OUTSIDE, 'forward')


def test_op_names_and_operands_from_hlo_text():
  hlo = '''HloModule m

%fused_computation.1 (p0: f32[4]) -> f32[4] {
  %p0 = f32[4]{0} parameter(0)
  ROOT %negate.1 = f32[4]{0} negate(f32[4]{0} %p0), metadata={op_name="jit(f)/Net/head/neg"}
}

ENTRY %main (a: f32[4]) -> f32[4] {
  %a = f32[4]{0} parameter(0)
  %add.2 = f32[4]{0} add(f32[4]{0} %a, f32[4]{0} %a), metadata={op_name="jit(f)/Net/trunk/add"}
  %copy.3 = f32[4]{0} copy(f32[4]{0} %add.2)
  ROOT %fusion.4 = f32[4]{0} fusion(f32[4]{0} %copy.3), kind=kLoop, calls=%fused_computation.1
}
'''
  names = step_profile.op_names(hlo)
  assert names['add.2'] == 'jit(f)/Net/trunk/add'
  assert names['fusion.4'] == 'jit(f)/Net/head/neg'  # from inside the fused computation
  assert 'copy.3' not in names
  reads = step_profile.operands(hlo)
  assert reads['copy.3'] == ['add.2'] and reads['fusion.4'] == ['copy.3']
  assert step_profile.by_operand('copy.3', names, reads, model='Net') == 'jit(f)/Net/trunk/add'


def test_attribute_sums_events_by_part_and_reads_hlo_op_arguments():
  """Known durations: the forward op's 3 us and the copy's 5 us (named by its hlo_op argument,
  as a device kernel may be) go to 'trunk'; runtime spans and unknown names are skipped."""
  hlo = (
      'ENTRY %main (a: f32[4]) -> f32[4] {\n'
      '  %a = f32[4]{0} parameter(0)\n'
      '  %add.2 = f32[4]{0} add(f32[4]{0} %a, f32[4]{0} %a), '
      'metadata={op_name="jit(f)/Net/trunk/add"}\n'
      '  ROOT %copy.3 = f32[4]{0} copy(f32[4]{0} %add.2)\n'
      '}\n')
  events = [{'name': 'add.2', 'dur': 3.0},
            {'name': 'kernel_7', 'dur': 5.0, 'args': {'hlo_op': 'copy.3'}},
            {'name': 'ThunkExecutor::Execute', 'dur': 100.0}, {'name': 'unknown.9', 'dur': 7.0}]
  assert step_profile.attribute(events, hlo, model='Net') == {
      ('trunk', 'forward'): 3.0, ('trunk', step_profile.NO_METADATA): 5.0}


def test_op_kinds_sum_numbered_instructions_of_one_shape():
  """Two numbered fusions of one name and shape are one kind (2 ops, 3 + 4 us); the same name
  with another shape is another; events naming no instruction are left out."""
  hlo = (
      'ENTRY %main (a: f32[2,3]) -> f32[3,2] {\n'
      '  %a = f32[2,3]{1,0} parameter(0)\n'
      '  %transpose_copy_fusion.1 = f32[3,2]{1,0} fusion(f32[2,3]{1,0} %a), kind=kLoop\n'
      '  %transpose_copy_fusion.17 = f32[3,2]{1,0} fusion(f32[2,3]{1,0} %a), kind=kLoop\n'
      '  %transpose_copy_fusion.2 = f32[6]{0} fusion(f32[2,3]{1,0} %a), kind=kLoop\n'
      '  ROOT %copy.5 = f32[3,2]{0,1} copy(f32[3,2]{1,0} %transpose_copy_fusion.1)\n'
      '}\n')
  events = [{'name': 'transpose_copy_fusion.1', 'dur': 3.0},
            {'name': 'transpose_copy_fusion.17', 'dur': 4.0},
            {'name': 'transpose_copy_fusion.2', 'dur': 1.0},
            {'name': 'k', 'dur': 9.0, 'args': {'hlo_op': 'copy.5'}},
            {'name': 'ThunkExecutor::Execute', 'dur': 50.0}]
  assert step_profile.op_kinds(events, hlo) == [
      {'op': 'copy', 'shape': 'f32[3,2]', 'count': 1, 'us': 9.0},
      {'op': 'transpose_copy_fusion', 'shape': 'f32[3,2]', 'count': 2, 'us': 7.0},
      {'op': 'transpose_copy_fusion', 'shape': 'f32[6]', 'count': 1, 'us': 1.0}]


class _Net(nn.Module):
  """A big layer and a small one: the big one's matmuls are 64x the small one's FLOPs."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(1024, name='big')(x))
    return nn.Dense(16, name='small')(x)


def test_a_traced_step_is_attributed_to_the_layer_that_does_the_work():
  """A known fact of the computation: the 512 x 1024 x 1024 layer's forward and backward hold
  most of a step's op time; the 1024 x 16 layer and the optimizer hold little."""
  net = _Net()
  x = jax.random.normal(jax.random.key(0), (512, 1024))
  params = net.init(jax.random.key(1), x)
  optimizer = optax.sgd(1e-3)
  state = (params, optimizer.init(params))

  @jax.jit
  def train_step(state, batch):
    params, opt_state = state
    loss, grads = jax.value_and_grad(lambda p: jnp.mean(net.apply(p, batch) ** 2))(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return (optax.apply_updates(params, updates), opt_state), {'loss': loss}

  compiled = train_step.lower(state, x).compile()
  per_step, wall_s = step_profile.profile_step(compiled, state, [x], steps=2, model='_Net')
  total = sum(per_step.values())
  big = sum(v for (part, _), v in per_step.items() if part == 'big')
  assert wall_s > 0 and total > 0
  assert big > 0.6 * total, per_step
  assert ('big', 'backward') in per_step and ('big', 'forward') in per_step


def test_on_an_accelerator_only_the_devices_kernels_count(tmp_path):
  """A GPU trace holds the host's launch of a kernel and the kernel itself, both named by its
  HLO instruction: only the device's event counts. A trace with no device process (XLA:CPU)
  keeps all; a kept trace reads back the same."""
  names = [{'ph': 'M', 'name': 'process_name', 'pid': 1, 'args': {'name': '/host:CPU'}},
           {'ph': 'M', 'name': 'process_name', 'pid': 7, 'args': {'name': '/device:GPU:0'}}]
  host = {'ph': 'X', 'pid': 1, 'name': 'fusion.3', 'dur': 50.0}
  kernel = {'ph': 'X', 'pid': 7, 'name': 'loop_fusion_kernel', 'dur': 4.0,
            'args': {'hlo_op': 'fusion.3'}}
  trace = tmp_path / 'a.trace.json.gz'
  with gzip.open(trace, 'wt') as f:
    json.dump({'traceEvents': names + [host, kernel]}, f)
  kept = str(tmp_path / 'kept.json.gz')
  assert step_profile.trace_events(str(trace), keep=kept) == [kernel]
  assert step_profile.trace_events(kept) == [kernel]
  assert step_profile.device_only([host, kernel], names[:1] + [host, kernel]) == [host, kernel]
  hlo = 'ENTRY %main {\n  %fusion.3 = f32[8,4]{1,0} fusion(%p), kind=kLoop, calls=%c\n}'
  assert step_profile.op_kinds([kernel], hlo) == [
      {'op': 'fusion', 'shape': 'f32[8,4]', 'count': 1, 'us': 4.0}]
