"""The TensorFlow-free crop of the GPU scripts equals the pipeline's crop (the reproduction's faces).

experiments/full_size_gpu.py and reproduce_gpu.py crop on the device in JAX because the lent GPU
machines have no TensorFlow; their numbers sit beside the CPU reproduction's only if the crops are
the same. Reference: input_pipeline.pipeline.crop_face, face by face.
"""

import numpy as np
import pytest

from experiments import full_size_gpu
from input_pipeline import pipeline
from input_pipeline import synthetic


@pytest.mark.parametrize('image_size', [176, 256])  # windows under and over 150 px: both paths
def test_jax_crop_equals_pipeline_crop(image_size):
  faces = synthetic.render_faces(4, 3, synthetic.RenderConfig(image_size=image_size))
  crop = pipeline.CropConfig(size=150, margin=0.25)
  reference = [pipeline.crop_face({'image': faces['image'][i][..., None], 'box': faces['box'][i],
                                   'landmarks': faces['landmarks'][i],
                                   'visibility': faces['visibility'][i],
                                   'pose': faces['pose'][i]}, crop) for i in range(4)]
  images, points = full_size_gpu.crop(faces['image'], faces['box'], faces['landmarks'])
  sides = (faces['box'][:, 2:] - faces['box'][:, :2]).max(1) * 1.5
  assert (sides < 150).any() == (image_size == 176)  # the bilinear path is exercised
  assert (sides > 150).any()  # the antialiased path is exercised
  np.testing.assert_allclose(np.asarray(images), np.stack([r['image'] for r in reference]),
                             atol=1e-4)  # a grey level is 2 / 255 = 8e-3
  np.testing.assert_allclose(np.asarray(points), np.stack([r['landmarks'] for r in reference]),
                             atol=1e-4)
