"""Protocols as data: the COFW mapping against the published table, the real tables' splits."""

import numpy as np

from treemoe_jax.evaluate import protocols

# hpm-detection-code utility/Mapping68kToCofw29.m, 0-based (as SPEC lists it): COFW point k is
# the mean of these iBUG points.
PUBLISHED_68_TO_29 = {
    0: [17], 1: [26], 2: [21], 3: [22], 4: [19], 5: [17, 21], 6: [24], 7: [22, 26], 8: [36],
    9: [45], 10: [39], 11: [42], 12: [37, 38], 13: [40, 41], 14: [43, 44], 15: [46, 47],
    16: list(range(36, 42)), 17: list(range(42, 48)), 18: [31], 19: [35], 20: [30], 21: [33],
    22: [48, 60], 23: [54, 64], 24: [50, 51, 52], 25: [62], 26: [66], 27: [56, 57, 58],
    28: [7, 8, 9],
}


def test_cofw_mapping_is_the_published_one():
  matrix = protocols.COFW_29.matrix()
  assert matrix.shape == (29, 68)
  for k, points in PUBLISHED_68_TO_29.items():
    expected = np.zeros(68)
    expected[points] = 1 / len(points)
    np.testing.assert_allclose(matrix[k], expected, err_msg=f'COFW point {k}')
  assert protocols.COFW_29.pupils == (16, 17)


def test_real_tables_name_the_builders_splits():
  splits = {(s.dataset, s.split) for p in (protocols.TABLE1, protocols.TABLE2, protocols.TABLE3)
            for s in p.subsets}
  assert splits == {('w300', 'lfpw_test'), ('w300', 'helen_test'), ('w300', 'ibug'),
                    ('cofw', 'test'), ('aflw2000_3d', 'test_yaw_0_30'),
                    ('aflw2000_3d', 'test_yaw_30_60'), ('aflw2000_3d', 'test_yaw_60_90')}
  normalizers = {s.name: s.normalizer for s in protocols.TABLE2.subsets}
  assert normalizers['lfpw'] == 'inter_pupil' and normalizers['lfpw_io'] == 'inter_ocular'
  assert {s.normalizer for s in protocols.TABLE3.subsets} == {'box'}
