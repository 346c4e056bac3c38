"""Vectorised committees against a loop over separately applied single experts (test-only loop)."""

import itertools

import jax
import jax.numpy as jnp

import numpy as np
import pytest

from treemoe_jax.nn import experts


def expert_slice(params, e):
  return jax.tree.map(lambda leaf: leaf[e], params)


def test_expert_cnns_equal_loop_over_single_experts():
  num_experts, features, kernels = 3, (4, 6, 8, 8, 5), (5, 5, 3, 3, 1)
  committee = experts.ExpertCNNs(num_experts, features, kernels)
  crops = jax.random.normal(jax.random.key(0), (2, 7, 32, 32))  # [B, P, S, S]
  params = jax.jit(committee.init)(jax.random.key(1), crops)['params']
  out = jax.jit(committee.apply)({'params': params}, crops)
  assert out.shape == (2, num_experts, 7 * 5)
  for leaf in jax.tree.leaves(params):
    assert leaf.shape[0] == num_experts  # expert axis leads every parameter
  single = jax.jit(experts.PatchCNN(features, kernels).apply)  # one compile for the 3 experts
  for e in range(num_experts):
    alone = single({'params': expert_slice(params['experts'], e)}, crops)
    np.testing.assert_allclose(out[:, e], alone, rtol=1e-5, atol=1e-5)
  assert not np.allclose(out[:, 0], out[:, 1])  # experts initialised independently


def test_patch_cnn_shares_kernels_across_patches():
  # The same patch at two landmark slots gives the same n features (section 3.2).
  cnn = experts.PatchCNN((4, 4, 4, 4, 3))
  crop = jax.random.normal(jax.random.key(0), (1, 1, 32, 32))
  crops = jnp.concatenate([crop, jnp.zeros_like(crop), crop], axis=1)
  params = cnn.init(jax.random.key(1), crops)
  out = cnn.apply(params, crops).reshape(1, 3, 3)
  np.testing.assert_allclose(out[:, 0], out[:, 2], rtol=1e-6)


@pytest.mark.parametrize('lowering', experts.MLP_LOWERINGS)
def test_expert_mlps_equal_numpy_formula_per_expert(lowering):
  committee = experts.ExpertMLPs(num_experts=4, hidden=16, outputs=10, lowering=lowering)
  h = np.random.default_rng(0).normal(size=(5, 12)).astype(np.float32)
  params = committee.init(jax.random.key(0), h)['params']['experts']
  out = np.asarray(committee.apply({'params': {'experts': params}}, h))
  assert out.shape == (5, 4, 10)
  for e in range(4):
    w0, b0 = np.asarray(params['hidden']['kernel'][e]), np.asarray(params['hidden']['bias'][e])
    w1, b1 = np.asarray(params['out']['kernel'][e]), np.asarray(params['out']['bias'][e])
    expected = np.maximum(h @ w0 + b0, 0) @ w1 + b1  # eq. 6
    np.testing.assert_allclose(out[:, e], expected, rtol=1e-5, atol=1e-5)


def test_combine_is_weighted_sum():
  rng = np.random.default_rng(0)
  outputs, weights = rng.normal(size=(3, 4, 6)), rng.dirichlet(np.ones(4), 3)
  expected = sum(weights[:, e, None] * outputs[:, e] for e in range(4))
  np.testing.assert_allclose(experts.combine(jnp.asarray(outputs), jnp.asarray(weights)),
                             expected, rtol=1e-5)
  with pytest.raises(ValueError, match='do not match'):
    experts.combine(jnp.zeros((3, 4, 6)), jnp.zeros((3, 5)))


@pytest.mark.parametrize('kernel,size', [(5, 32), (3, 4), (1, 2), (3, 7)])
def test_im2col_conv_equals_lax_convolution(kernel, size):
  x = jax.random.normal(jax.random.key(0), (3, size, size, 4))
  conv = experts.Im2colConv(6, kernel)
  params = conv.init(jax.random.key(1), x)['params']
  expected = jax.lax.conv_general_dilated(
      x, params['kernel'], (2, 2), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision=jax.lax.Precision.HIGHEST) + params['bias']
  np.testing.assert_allclose(conv.apply({'params': params}, x), expected, rtol=1e-4, atol=1e-4)


def test_conv_impls_share_parameters_and_outputs():
  crops = jax.random.normal(jax.random.key(0), (2, 5, 32, 32))
  im2col = experts.ExpertCNNs(3, (4, 6, 8, 8, 5), conv_impl='im2col')
  xla = experts.ExpertCNNs(3, (4, 6, 8, 8, 5), conv_impl='xla')
  params = im2col.init(jax.random.key(1), crops)
  assert jax.tree.structure(params) == jax.tree.structure(xla.init(jax.random.key(1), crops))
  np.testing.assert_allclose(im2col.apply(params, crops), xla.apply(params, crops),
                             rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="unknown conv_impl 'cudnn'"):
    experts.ExpertCNNs(1, conv_impl='cudnn').init(jax.random.key(0), crops)


@pytest.mark.parametrize('num_experts,features,kernels,patch', [
    (8, (3, 4, 5, 6, 3), (5, 5, 3, 3, 1), 32),  # pose experts, the paper's 1x1 last map
    (1, (4, 6, 8, 8, 5), (5, 5, 3, 3, 1), 16),  # one CNN, a 16 px patch: the last map pooled
    (3, (4,), (3,), 8),  # a single layer: no ReLU anywhere
])
@pytest.mark.parametrize('lowering', ['merged', 'blockdiag', 'padded'])
def test_committee_lowerings_equal_vmap(num_experts, features, kernels, patch, lowering):
  """The 'merged' committee (one conv for the shared first layer, then per expert) and the
  'blockdiag' one (then every layer one convolution with a block-diagonal kernel) are the plain
  nn.vmap committee: outputs and parameter gradients, from the same [E, ...] parameters."""
  crops = jax.random.normal(jax.random.key(0), (2, 5, patch, patch))
  plain = experts.ExpertCNNs(num_experts, features, kernels, lowering='vmap')
  merged = experts.ExpertCNNs(num_experts, features, kernels, lowering=lowering)
  variables = jax.jit(plain.init)(jax.random.key(1), crops)
  assert_same_committee(plain, merged, variables, crops)


def assert_same_committee(reference, other, variables, crops):
  """Outputs and parameter gradients of two committee modules on the same variables agree."""
  np.testing.assert_allclose(jax.jit(other.apply)(variables, crops),
                             jax.jit(reference.apply)(variables, crops), rtol=1e-4, atol=1e-5)
  grads = [jax.jit(jax.grad(lambda v, m=m: jnp.sum(m.apply(v, crops) ** 2)))(variables)
           for m in (reference, other)]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)


def test_group_block_diagonal_equals_a_loop():
  """Entry [i, j, a*C + c, (J*G + b)*F + f] is expert J*G+a's kernel where a == b, else 0."""
  kernel = np.asarray(jax.random.normal(jax.random.key(0), (6, 3, 3, 2, 4)))  # [E, k, k, C, F]
  for g in (1, 2, 3, 6):
    blocks = np.asarray(experts.group_block_diagonal(jnp.asarray(kernel), g))
    expected = np.zeros((3, 3, g * 2, 6 * 4))
    for e in range(6):
      a = e % g
      expected[:, :, a * 2:(a + 1) * 2, e * 4:(e + 1) * 4] = kernel[e]
    np.testing.assert_array_equal(blocks, expected)
  with pytest.raises(ValueError, match='6 experts do not split into groups of 4'):
    experts.group_block_diagonal(jnp.asarray(kernel), 4)


@pytest.mark.parametrize('experts_per_group,channel_multiple', [(1, 1), (1, 8), (2, 8), (4, 1),
                                                                 (None, 8)])
def test_grouped_committee_equals_vmap(experts_per_group, channel_multiple):
  """Any grouping of the experts, with or without zero-padded widths, is the nn.vmap committee,
  outputs and parameter gradients (the gradients w.r.t. the unpadded parameters)."""
  crops = jax.random.normal(jax.random.key(0), (1, 3, 32, 32))
  plain = experts.ExpertCNNs(4, (3, 5, 6, 9, 4), (5, 5, 3, 3, 1), lowering='vmap',
                             conv_impl='xla')
  params = jax.jit(plain.init)(jax.random.key(1), crops)['params']
  grouped = jax.jit(lambda p: experts.grouped_committee(p['experts'], crops, experts_per_group,
                                                        channel_multiple))
  reference = jax.jit(lambda p: plain.apply({'params': p}, crops))
  np.testing.assert_allclose(grouped(params), reference(params), rtol=1e-4, atol=1e-5)
  grads = [jax.grad(lambda p, f=f: jnp.sum(jnp.sin(f(p))))(params) for f in (reference, grouped)]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    assert a.shape == b.shape
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)


def test_padded_channels_pad_with_zeros_to_the_multiple():
  params = {f'conv{i}': {'kernel': jnp.ones((2, 3, 3, c, f)), 'bias': jnp.ones((2, f))}
            for i, (c, f) in enumerate([(1, 7), (7, 14), (14, 30)])}
  padded = experts.padded_channels(params, 8)
  assert [padded[f'conv{i}']['kernel'].shape for i in range(3)] == [
      (2, 3, 3, 1, 8), (2, 3, 3, 8, 16), (2, 3, 3, 16, 30)]  # the features keep their width
  for i in range(3):
    kernel, bias = padded[f'conv{i}']['kernel'], padded[f'conv{i}']['bias']
    original = params[f'conv{i}']['kernel']
    assert float(kernel.sum()) == float(original.sum())  # what was added is zero
    assert float(bias.sum()) == float(params[f'conv{i}']['bias'].sum())


def test_merged_committee_with_xlas_own_gradients_equals_vmap():
  """kernel_grad='none' (no custom VJP: what 'auto' means off the CPU) gives vmap's gradients."""
  crops = jax.random.normal(jax.random.key(0), (1, 3, 16, 16))
  plain = experts.ExpertCNNs(3, (3, 4, 5, 6, 3), (5, 5, 3, 3, 1), lowering='vmap',
                             conv_impl='xla')
  params = jax.jit(plain.init)(jax.random.key(1), crops)['params']
  grads = [jax.jit(jax.grad(lambda p, f=f: jnp.sum(f(p) ** 2)))(params) for f in (
      lambda p: plain.apply({'params': p}, crops),
      lambda p: experts.merged_committee(p['experts'], crops, kernel_grad='none'))]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)
  with pytest.raises(ValueError, match="unknown kernel_grad 'cudnn'"):
    experts.merged_committee(params['experts'], crops, kernel_grad='cudnn')


def test_scanned_regressors_have_the_gradients_of_the_vmapped_ones():
  """Same [E, ...] parameters, same outputs and same parameter and input gradients."""
  h = jax.random.normal(jax.random.key(0), (3, 12))
  plain = experts.ExpertMLPs(num_experts=5, hidden=8, outputs=6, lowering='vmap')
  scan = experts.ExpertMLPs(num_experts=5, hidden=8, outputs=6, lowering='scan')
  variables = plain.init(jax.random.key(1), h)
  grads = [jax.grad(lambda v, x, m=m: jnp.sum(jnp.sin(m.apply(v, x))), (0, 1))(variables, h)
           for m in (plain, scan)]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="unknown regression committee lowering 'loop'"):
    experts.ExpertMLPs(num_experts=5, hidden=8, outputs=6, lowering='loop').apply(variables, h)


def test_mlp_lowering_per_backend():
  assert experts.resolve_mlp_lowering('auto', 'cpu') == 'scan'
  assert experts.resolve_mlp_lowering('auto', 'gpu') == 'vmap'
  assert experts.resolve_mlp_lowering('vmap', 'cpu') == 'vmap'


def test_cnn_lowering_per_backend():
  # Measured: 'merged' on the CPU, 'blockdiag' on an H100 at every batch from 1 to 1024; other
  # backends keep nn.vmap's. An explicit lowering is never overridden.
  assert experts.resolve_cnn_lowering('auto', 'cpu') == 'merged'
  assert experts.resolve_cnn_lowering('auto', 'gpu') == 'blockdiag'
  assert experts.resolve_cnn_lowering('auto', 'tpu') == 'vmap'
  assert experts.resolve_cnn_lowering('vmap', 'gpu') == 'vmap'
  assert experts.resolve_cnn_lowering('padded', 'cpu') == 'padded'
  # A forward never differentiated: the CPU takes 'padded' (faster forward, slower gradient).
  assert experts.resolve_cnn_lowering('auto', 'cpu', inference=True) == 'padded'
  assert experts.resolve_cnn_lowering('auto', 'gpu', inference=True) == 'blockdiag'
  assert experts.resolve_cnn_lowering('merged', 'cpu', inference=True) == 'merged'
  with pytest.raises(ValueError, match="unknown CNN committee lowering 'grouped'"):
    experts.resolve_cnn_lowering('grouped')


@pytest.mark.parametrize('lowering', ['vmap', 'merged', 'blockdiag'])
def test_bfloat16_committees_keep_float32_parameters_and_outputs(lowering):
  crops = jax.random.normal(jax.random.key(0), (2, 5, 16, 16))
  cnns = experts.ExpertCNNs(4, (4, 6, 8, 8, 5), lowering=lowering, dtype=jnp.bfloat16)
  reference = experts.ExpertCNNs(4, (4, 6, 8, 8, 5), lowering=lowering)
  variables = jax.jit(cnns.init)(jax.random.key(1), crops)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  h = jax.jit(cnns.apply)(variables, crops)
  assert h.dtype == jnp.float32
  expected = jax.jit(reference.apply)(variables, crops)
  assert not np.array_equal(h, expected)  # it did compute in bf16
  np.testing.assert_allclose(h, expected, rtol=0.05, atol=0.05 * float(jnp.abs(expected).max()))
  mlps = experts.ExpertMLPs(4, 16, 6, dtype=jnp.bfloat16)
  mlp_vars = mlps.init(jax.random.key(2), h[:, 0])
  out = mlps.apply(mlp_vars, h[:, 0])
  assert out.dtype == jnp.float32
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(mlp_vars))


@pytest.mark.parametrize('size,kernel,padding', [
    (16, 5, None), (9, 5, None), (8, 3, None), (7, 3, None), (4, 1, None),
    (16, 5, (1, 1)), (7, 3, (0, 0)), (3, 3, (0, 0)), (1, 1, (0, 0)), (6, 3, (1, 1)),
    (10, 5, (2, 0))])  # explicit paddings: the windows receptive_crops gives
def test_stride2_conv_and_its_gradients_equal_xlas(size, kernel, padding):
  """The merged committee's stride-2 convolution takes its input gradient through the
  space-to-depth form: value, input and kernel gradients equal lax's strided 'SAME' (or
  explicitly padded) one."""
  keys = jax.random.split(jax.random.key(size * kernel), 3)
  x = jax.random.normal(keys[0], (3, size, size, 4))
  w = jax.random.normal(keys[1], (kernel, kernel, 4, 6))

  def reference(x, w):
    return jax.lax.conv_general_dilated(x, w, (2, 2), 'SAME' if padding is None else
                                        (padding, padding),
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  expected = reference(x, w)
  if padding is None:
    assert expected.shape == (3, -(-size // 2), -(-size // 2), 6)
  np.testing.assert_allclose(experts.space_to_depth_conv(x, w, padding), expected, rtol=1e-5,
                             atol=1e-4)
  np.testing.assert_allclose(experts.stride2_conv(x, w, 'xla', padding), expected, rtol=1e-5,
                             atol=1e-4)
  g = jax.random.normal(keys[2], expected.shape)
  want = jax.vjp(reference, x, w)[1](g)
  for kernel_grad in experts.KERNEL_GRADS:
    got = jax.vjp(lambda x, w, m=kernel_grad: experts.stride2_conv(x, w, m, padding), x, w)[1](g)
    for a, b in zip(got, want):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize('size,kernel,channels', [(9, 5, 1), (8, 3, 2), (5, 1, 3)])
def test_im2col_kernel_grad_equals_a_brute_force_sum(size, kernel, channels):
  """dL/dK[i, j, c, f] = sum over images and output pixels of the padded input under tap (i, j)
  times the output's cotangent, with 'SAME' padding as XLA pads (the extra row after)."""
  rng = np.random.default_rng(size)
  x = rng.normal(size=(2, size, size, channels)).astype(np.float32)
  out = -(-size // 2)
  g = rng.normal(size=(2, out, out, 4)).astype(np.float32)
  pad = max((out - 1) * 2 + kernel - size, 0)
  padded = np.pad(x, ((0, 0), (pad // 2, pad - pad // 2), (pad // 2, pad - pad // 2), (0, 0)))
  want = np.zeros((kernel, kernel, channels, 4))
  for i, j, n, r, c in itertools.product(range(kernel), range(kernel), range(2), range(out),
                                         range(out)):
    want[i, j] += np.outer(padded[n, 2 * r + i, 2 * c + j], g[n, r, c])
  got = experts.im2col_kernel_grad(jnp.asarray(x), jnp.asarray(g), kernel, 2)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  with pytest.raises(ValueError, match="unknown kernel_grad 'fft'"):
    jax.vjp(lambda k: experts.stride2_conv(jnp.asarray(x), k, 'fft'),
            jnp.ones((kernel, kernel, channels, 4)))[1](jnp.asarray(g))
  with pytest.raises(ValueError, match="unknown kernel_grad 'fft'"):  # forward alone, too
    experts.stride2_conv(jnp.asarray(x), jnp.ones((kernel, kernel, channels, 4)), 'fft')


def same_chain(params, x, stride=2):
  """The expert CNN as section 3.5 defines it, every layer a 'SAME' strided convolution over its
  whole input (the reference `receptive_crops` must match): x [N, S, S, 1] -> [N, n]."""
  last = len(params) - 1
  for i in range(len(params)):
    x = jax.lax.conv_general_dilated(x, params[f'conv{i}']['kernel'], (stride, stride), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    x = x + params[f'conv{i}']['bias']
    if i < last:
      x = jax.nn.relu(x)
  return x.mean(axis=(1, 2))


def test_receptive_crops_of_the_papers_chain_by_hand():
  # 32 -> 16 -> 8 -> 4 -> 2 -> 1. The 1x1 stride-2 last layer reads pixel (0, 0) of its 2x2
  # input; that output of the 3x3 layer before reads its input's rows 0-2 ('SAME' pads after);
  # those three outputs read rows 0-6 of the 8x8 map; those 7 outputs of the second (5x5) layer
  # read rows -1..15 of the 16x16 map: padded 1 before, and 1 after (read by no output), so
  # 18 rows. The first layer computes all 16 rows, as 'SAME'.
  assert experts.receptive_crops(32, (5, 5, 3, 3, 1)) == (
      None, (16, 1, 1), (7, 0, 0), (3, 0, 0), (1, 0, 0))
  assert experts.receptive_crops(16, (5, 5, 3, 3, 1)) == (None,) * 5  # every output is read


@pytest.mark.parametrize('patch', [32, 20, 16])  # the paper's; padded windows; none cropped
@pytest.mark.parametrize('conv_impl', experts.CONV_IMPLS)
def test_cropped_patch_cnn_equals_the_same_chain(patch, conv_impl):
  """Outputs and parameter gradients of the cropped PatchCNN are those of the uncropped chain."""
  features, kernels = (4, 6, 8, 8, 5), (5, 5, 3, 3, 1)
  cnn = experts.PatchCNN(features, kernels, conv_impl=conv_impl)
  crops = jax.random.normal(jax.random.key(0), (2, 3, patch, patch))
  params = cnn.init(jax.random.key(1), crops)['params']
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params)

  def reference(p):
    return same_chain(p, crops.reshape(6, patch, patch, 1)).reshape(2, -1)

  np.testing.assert_allclose(jax.jit(cnn.apply)({'params': params}, crops), reference(params),
                             rtol=1e-5, atol=1e-5)
  grads = [jax.jit(jax.grad(lambda p, f=f: jnp.sum(f(p) ** 2)))(params)
           for f in (lambda p: cnn.apply({'params': p}, crops), reference)]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_receptive_crops_are_tight():
  """Each crop reads exactly the rows the features depend on: the gradient of the features with
  respect to the layer's input is nonzero in its last cropped row and zero beyond."""
  kernels, patch = (5, 5, 3, 3, 1), 32
  params = {f'conv{i}': {'kernel': jnp.full((k, k, 1, 1), 0.1), 'bias': jnp.ones(1)}
            for i, k in enumerate(kernels)}  # positive: every path carries gradient
  crops = experts.receptive_crops(patch, kernels)
  x = jnp.ones((1, patch, patch, 1))
  maps = [x]  # the inputs of layers 0..4 in the 'SAME' chain
  for i in range(len(kernels) - 1):
    maps.append(jax.nn.relu(jax.lax.conv_general_dilated(
        maps[-1], params[f'conv{i}']['kernel'], (2, 2), 'SAME',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + 1.0))
  for i, crop in enumerate(crops):
    if crop is None:
      continue
    rest = {f'conv{j - i}': params[f'conv{j}'] for j in range(i, len(kernels))}
    grad = jax.grad(lambda m, r=rest: same_chain(r, m).sum())(maps[i])[0, :, 0, 0]  # [rows]
    take = crop[0]
    assert grad[take - 1] != 0 and np.all(np.asarray(grad[take:]) == 0), (i, crop, grad)


@pytest.mark.parametrize('lowering,first_layer', [
    ('merged', 'matmul'), ('blockdiag', 'matmul'), ('padded', 'matmul'),
    ('blockdiag', 's2d'), ('merged', 's2d')])
def test_first_layer_as_a_matmul_or_space_to_depth_equals_vmap(lowering, first_layer):
  """The merged lowerings with their first layer as one matmul of windows and a row of ones
  (experts.first_layer_matmul) or as the space-to-depth convolution compute nn.vmap's committee:
  outputs and parameter gradients, the first layer's bias gradient included (for 'matmul' it
  comes from the matmul's ones row)."""
  features, kernels = (3, 4, 5, 6, 3), (5, 5, 3, 3, 1)
  crops = jax.random.normal(jax.random.key(0), (2, 5, 32, 32))
  plain = experts.ExpertCNNs(4, features, kernels, lowering='vmap')
  other = experts.ExpertCNNs(4, features, kernels, lowering=lowering, first_layer=first_layer)
  variables = jax.jit(plain.init)(jax.random.key(1), crops)
  variables = jax.tree.map(lambda p: p + 0.1, variables)  # nonzero biases
  assert_same_committee(plain, other, variables, crops)


@pytest.mark.parametrize('size,crop', [(16, None), (17, None), (16, (16, 1, 1)), (16, (9, 2, 0))])
def test_taps_first_windows_are_the_windows_by_tap(size, crop):
  """`windows(taps_first=True)` [k*k, N, H', W', C] holds what a loop over the padded input reads
  for tap (i, j) at output (y, x): input row s*y + i - before."""
  x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
  k, s = 5, 2
  got = np.asarray(experts.windows(x, k, s, crop, taps_first=True))
  if crop is None:
    out = -(-size // s)
    before = max((out - 1) * s + k - size, 0) // 2
    rows = size
  else:
    rows, before, after = crop
    out = (rows + before + after - k) // s + 1
  assert got.shape == (k * k, 2, out, out, 3)
  xs = np.asarray(x)
  for i in range(k):
    for j in range(k):
      for y in range(out):
        for c in range(out):
          r, q = s * y + i - before, s * c + j - before
          inside = 0 <= r < rows and 0 <= q < rows
          want = xs[:, r, q] if inside else 0.0
          np.testing.assert_array_equal(got[i * k + j, :, y, c], want)


def test_first_layer_per_backend():
  assert experts.resolve_first_layer('auto', 'cpu') == 'conv'  # measured: 'matmul' slower
  assert experts.resolve_first_layer('auto', 'gpu') == 'conv'  # not measured
  assert experts.resolve_first_layer('matmul', 'gpu') == 'matmul'
  assert experts.resolve_first_layer('s2d', 'gpu') == 's2d'
  with pytest.raises(ValueError, match='unknown CNN first layer'):
    experts.resolve_first_layer('gemm')
