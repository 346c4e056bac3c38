"""Face detectors: boxes on real photographs against points read by eye, and the box maps.

The photographs' points were read off zoomed, pixel-gridded views of the images (about +-2 px):
pupils, nose tip, mouth centre, chin, and the box the 68 landmarks would span (brows to chin,
jaw at ear level). They check where the detectors' mapped boxes land, independently of the code.
"""

import sys

import numpy as np
import pytest

from treemoe_jax.inference import detect


def _astronaut():
  import skimage.data  # pylint: disable=g-import-not-at-top (test extra)
  return skimage.data.astronaut()  # 512 x 512 RGB


def _grace_hopper():
  from matplotlib import cbook  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with cbook.get_sample_data('grace_hopper.jpg') as f:
    return np.asarray(Image.open(f).convert('RGB'))  # 512 wide, 600 high


# Read by eye; (x, y) image pixels. Pupils: the subject's right (image left) first.
PHOTOS = {
    'astronaut': dict(load=_astronaut, pupils=((202, 101), (246, 102)), nose_tip=(226, 128),
                      mouth=(228, 146), chin=(232, 189), landmark_box=(183, 89, 266, 190)),
    'grace_hopper': dict(load=_grace_hopper, pupils=((222, 191), (307, 190)), nose_tip=(267, 248),
                         mouth=(268, 279), chin=(268, 331), landmark_box=(188, 170, 345, 332)),
}
DETECTORS = ('dlib', 'opencv')
READING_ERROR = 2.0  # px


def _iou(a, b) -> float:
  inner = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None).prod()
  area = lambda box: np.prod(np.asarray(box[2:]) - box[:2])
  return float(inner / (area(a) + area(b) - inner))


def _contains(box, point) -> bool:
  return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def _crop_window(box, margin=0.25):
  """The training crop (pipeline.crop_window): the square on the box centre, longer side plus
  `margin` of it on each side, as (x0, y0, x1, y1)."""
  centre = (np.asarray(box[:2]) + box[2:]) / 2
  half = max(box[2] - box[0], box[3] - box[1]) * (1 + 2 * margin) / 2
  return np.concatenate([centre - half, centre + half])


@pytest.mark.parametrize('photo', sorted(PHOTOS))
@pytest.mark.parametrize('name', DETECTORS)
def test_detector_finds_the_face_of_a_photograph_where_the_eyes_are(name, photo):
  truth = PHOTOS[photo]
  image = truth['load']()
  detector = detect.make(name)
  detections = detector(image)
  assert detections, f'{name} found no face on {photo}'
  best = detections[0]
  assert best.box.dtype == np.float32 and best.box.shape == (4,)
  assert isinstance(best.score, float)
  assert [d.score for d in detections] == sorted((d.score for d in detections), reverse=True)
  (rx, ry), (lx, ly) = truth['pupils']
  centre = (best.box[:2] + best.box[2:]) / 2
  # The centre lies between the pupils, below the eyes and above the chin.
  assert rx <= centre[0] <= lx and min(ry, ly) <= centre[1] <= truth['chin'][1], best.box
  for point in (*truth['pupils'], truth['nose_tip'], truth['mouth']):
    assert _contains(best.box, point), (point, best.box)
  # The model's crop around the mapped box holds the whole face, chin included, to within the
  # reading error (OpenCV's crop of the astronaut ends at her chin, 189.9).
  window = _crop_window(best.box) + np.array([-1, -1, 1, 1]) * READING_ERROR
  assert _contains(window, truth['landmark_box'][:2]), window
  assert _contains(window, truth['landmark_box'][2:]), window
  # The map moves the detector's box towards the landmark box.
  raw_boxes, raw_scores = detector.raw(image)
  kept = raw_scores >= detector.min_score  # the rest are dropped as too unsure
  np.testing.assert_allclose(raw_scores[kept], [d.score for d in detections], rtol=1e-6)
  assert _iou(best.box, truth['landmark_box']) > 0.6
  assert _iou(best.box, truth['landmark_box']) > _iou(raw_boxes[0], truth['landmark_box'])
  # Anything else found is elsewhere, and less sure (dlib: the astronaut's mission patch, 0.12,
  # under its default min_score, so dropped unless asked for).
  for other in detections[1:]:
    assert _iou(other.box, best.box) == 0 and other.score < 0.5 * best.score
  if detector.name == 'dlib' and photo == 'astronaut':
    assert len(detections) == 1
    everything = detect.make('dlib', min_score=float('-inf'))(image)
    assert len(everything) == 2 and everything[1].score < 0.5


def test_opencv_finds_exactly_one_face_on_the_astronaut():
  assert len(detect.make('opencv')(_astronaut())) == 1


def test_box_map_moves_and_scales_a_box_by_known_numbers():
  box_map = detect.BoxMap(dx=0.1, dy=-0.2, sx=0.5, sy=2.0)
  # Box 100 x 50 centred at (60, 45): centre + (10, -10) = (70, 35), size 50 x 100.
  np.testing.assert_allclose(box_map(np.array([10, 20, 110, 70])), [45, -15, 95, 85])
  np.testing.assert_allclose(box_map(np.zeros((2, 3, 4)) + [0, 0, 10, 10]).shape, (2, 3, 4))
  # The measured dlib map on a 100 px square at the origin, by hand: centre (50 - 1.13,
  # 50 + 11.83), half sizes 42.665 and 46.05.
  np.testing.assert_allclose(detect.BOX_MAPS['dlib'](np.array([0., 0., 100., 100.])),
                             [6.205, 15.78, 91.535, 107.88], atol=1e-3)


def test_fit_box_map_recovers_a_known_map_by_median():
  rng = np.random.default_rng(0)
  corner = rng.uniform(0, 100, (21, 2))
  size = rng.uniform(20, 80, (21, 2))
  detected = np.concatenate([corner, corner + size], 1)
  # truth by hand: centre moved by (0.05 w, 0.15 h), size scaled (0.9, 1.1).
  centre = corner + size / 2 + size * [0.05, 0.15]
  half = size * [0.9, 1.1] / 2
  truth = np.concatenate([centre - half, centre + half], 1)
  truth[3] += [40, -30, 90, 0]  # One face's detection is way off; the median ignores it.
  fitted = detect.fit_box_map(detected, truth)
  np.testing.assert_allclose([fitted.dx, fitted.dy, fitted.sx, fitted.sy], [0.05, 0.15, 0.9, 1.1],
                             atol=1e-9)
  with pytest.raises(ValueError, match=r'\[N, 4\]'):
    detect.fit_box_map(detected, truth[:3])


def test_detector_searches_large_images_downscaled_and_maps_boxes_back():
  seen = []

  def raw(pixels):
    seen.append(pixels.shape)
    # Two boxes in the small image's pixels, worse score first.
    return np.array([[0, 0, 4, 4], [9.5, 9.5, 19.5, 29.5]]), np.array([0.5, 2.0])

  identity = detect.BoxMap(0.0, 0.0, 1.0, 1.0)
  detector = detect.Detector('fake', raw, identity, max_side=100)
  detections = detector(np.zeros((200, 400, 3), np.uint8))
  assert seen == [(50, 100, 3)]
  # Edges scale by 4 about the pixel grid's corner at -0.5: (e + 0.5) * 4 - 0.5.
  np.testing.assert_allclose(detections[0].box, [39.5, 39.5, 79.5, 119.5])
  assert [d.score for d in detections] == [2.0, 0.5]
  assert not detections[0].box.flags.writeable
  small = detect.Detector('fake', raw, detect.BoxMap(0.0, 0.5, 2.0, 1.0), max_side=1000)
  box = small(np.zeros((30, 40, 1), np.uint8))[0].box  # [H, W, 1] is taken as gray.
  assert seen[-1] == (30, 40)
  np.testing.assert_allclose(box, [4.5, 19.5, 24.5, 39.5])  # Down half its height, twice as wide.


@pytest.mark.parametrize('image, error', [
    (np.zeros((8, 8), np.float32), 'uint8'),
    (np.zeros((8, 8, 4), np.uint8), r'\[H, W, 3\]'),
    (np.zeros((0, 8), np.uint8), r'\[H, W\]'),
])
def test_detector_refuses_images_it_cannot_search(image, error):
  detector = detect.Detector('fake', lambda p: (np.zeros((0, 4)), np.zeros(0)),
                             detect.BoxMap(0, 0, 1, 1), max_side=10)
  with pytest.raises(ValueError, match=error):
    detector(image)


def test_make_names_the_pip_command_for_a_missing_detector(monkeypatch):
  with pytest.raises(ValueError, match="unknown face detector 'hog'; valid: auto, dlib, opencv"):
    detect.make('hog')
  monkeypatch.setitem(sys.modules, 'dlib', None)  # `import dlib` now raises ImportError.
  assert 'dlib' not in detect.available()
  with pytest.raises(ImportError, match=r"pip install 'dlib-bin>=19.24'"):
    detect.make('dlib')
  monkeypatch.setitem(sys.modules, 'cv2', None)
  assert detect.available() == []
  with pytest.raises(ImportError, match=r"no face detector is installed: pip install "
                                        r"'treemoe-jax\[detect\]'"):
    detect.make('auto')


def test_auto_takes_dlib_first_then_opencv(monkeypatch):
  # Both are in the test extra (pyproject.toml), so both import here.
  assert detect.available() == ['dlib', 'opencv']
  assert detect.make().name == 'dlib'
  monkeypatch.setitem(sys.modules, 'dlib', None)  # `import dlib` now raises ImportError.
  assert detect.make().name == 'opencv'
