"""Photographs in and out: which files are read, output names that stay in OUTDIR, boxes files."""

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from treemoe_jax.inference import photos


def _png(path, value=128):
  Image.fromarray(np.full((16, 16, 3), value, np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path):
  """A folder as people have them: images, broken ones, other files, a subfolder."""
  root = tmp_path / 'photos'
  root.mkdir()
  _png(root / 'a.jpg')  # PNG bytes under a .jpg name: the reader, not the name, decides.
  _png(root / 'b_faceless.png', 0)
  _png(root / 'UPPER.JPG')
  (root / 'corrupt.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
  (root / 'empty.png').write_bytes(b'')
  (root / 'notes.txt').write_text('not an image')
  _png(root / '.hidden.png')
  (root / 'sub').mkdir()
  _png(root / 'sub' / 'deeper.png')
  return root


def test_folders_give_their_image_files_sorted_and_files_are_taken_as_given(folder):
  images, skipped = photos.list_images([folder])
  assert [p.name for p in images] == ['UPPER.JPG', 'a.jpg', 'b_faceless.png', 'corrupt.jpg',
                                      'empty.png']
  assert sorted(p.name for p in skipped) == ['.hidden.png', 'notes.txt']
  # A file named on the command line is read whatever its name; one reached twice, once.
  images, _ = photos.list_images([folder / 'notes.txt', folder, str(folder / 'a.jpg'),
                                  folder / 'sub' / '..' / 'a.jpg'])
  assert [p.name for p in images] == ['notes.txt', 'UPPER.JPG', 'a.jpg', 'b_faceless.png',
                                      'corrupt.jpg', 'empty.png']


def test_missing_inputs_and_folders_without_images_are_input_errors(folder, tmp_path):
  with pytest.raises(photos.InputError, match='no images or folders given'):
    photos.list_images([])
  with pytest.raises(photos.InputError, match=r'nope\.jpg: no such file or folder'):
    photos.list_images([folder, tmp_path / 'nope.jpg'])
  bare = tmp_path / 'bare'
  bare.mkdir()
  (bare / 'readme.md').write_text('x')
  with pytest.raises(photos.InputError, match=r'no image to align in .*bare \(folders are '
                                               r'searched for bmp, gif, jpeg, jpg, pbm, pgm, png, '
                                               r'pnm, ppm, tif, tiff, webp\)'):
    photos.list_images([bare])


def test_netpbm_files_in_a_folder_are_images_and_read(tmp_path):
  # BioID ships as .pgm: PIL reads Netpbm, so a folder of them must not be skipped.
  for name, mode in (('face.pgm', 'L'), ('face.ppm', 'RGB'), ('face.pnm', 'RGB'),
                     ('mask.pbm', '1')):
    Image.new(mode, (5, 4)).save(tmp_path / name, format='PPM')
  (tmp_path / 'face.txt').write_text('x')
  images, skipped = photos.list_images([tmp_path])
  assert [p.name for p in images] == ['face.pgm', 'face.pnm', 'face.ppm', 'mask.pbm']
  assert [p.name for p in skipped] == ['face.txt']
  from input_pipeline import formats  # pylint: disable=g-import-not-at-top
  assert formats.read_image(tmp_path / 'face.pgm').shape[:2] == (4, 5)


def test_a_file_name_that_is_not_utf8_prints_as_escapes():
  # Linux keeps such bytes as surrogates (os.fsdecode): unprintable in UTF-8 until escaped.
  name = os.fsdecode(b'dir/caf\xe9.png')
  assert name == 'dir/caf\udce9.png'
  assert photos.printable(name) == 'dir/caf\\xe9.png'
  assert photos.printable('dir/café.png') == 'dir/café.png'  # UTF-8 names are left as they are
  photos.printable(name).encode('utf-8')  # what a CSV row needs


@pytest.mark.parametrize('given, expected', [
    ('../../etc/passwd', 'passwd'),
    ('/abs/dir/photo.jpg', 'photo.jpg'),
    ('dir\\evil name.jpg', 'evil_name.jpg'),  # A Windows separator, on any system.
    ('my holiday (1).JPG', 'my_holiday__1_.JPG'),
    ('café ☕.png', 'caf___.png'),
    ('.hidden.png', 'hidden.png'),
    ('..', 'image'),
    ('...', 'image'),
    ('a/b/', 'image'),
    ('-dash_ok-1.2.png', '-dash_ok-1.2.png'),
])
def test_safe_names_keep_only_the_file_name_in_safe_characters(given, expected):
  assert photos.safe_name(given) == expected


def test_long_names_are_cut_to_fit_a_file_system():
  assert len(photos.safe_name('x' * 300 + '.jpg')) == 200


def test_colliding_names_get_numbered_before_the_extension():
  names = photos.output_names(['x/a.jpg', 'y/a.jpg', 'A.jpg', 'a_2.jpg', 'noext', 'z/noext',
                               '../../etc/passwd', 'passwd'])
  assert names == ['a.jpg', 'a_2.jpg', 'A_3.jpg', 'a_2_2.jpg', 'noext', 'noext_2', 'passwd',
                   'passwd_2']


def test_every_output_path_stays_inside_outdir(tmp_path):
  outdir = tmp_path / 'out'
  outdir.mkdir()
  given = ['../../etc/passwd', '/etc/shadow', 'a/../../b.png', '..', '.', '\\..\\..\\x.jpg',
           'ü/../../ñ.png', 'con', '.bashrc', '\n.png', '~/.ssh/id_rsa']
  names = photos.output_names(given)
  assert len(set(n.lower() for n in names)) == len(names)
  for name in names:
    for suffix in ('.json', '.png'):
      path = photos.output_path(outdir, name, suffix)
      assert path.parent == outdir.resolve() and not path.name.startswith('.'), path
  with pytest.raises(ValueError, match='would leave'):
    photos.output_path(outdir, '../escape', '.json')
  # A link planted in OUTDIR does not take a write elsewhere either.
  os.symlink(tmp_path / 'elsewhere.json', outdir / 'planted.json')
  with pytest.raises(ValueError, match='would leave'):
    photos.output_path(outdir, 'planted', '.json')


# --- Boxes files. ---


def test_json_boxes_are_read_per_file_name(tmp_path):
  path = tmp_path / 'boxes.json'
  path.write_text(json.dumps({'a.jpg': [[1, 2, 30, 40.5], [50, 60, 70, 80]], 'b.png': []}))
  assert photos.read_boxes(path) == {'a.jpg': [(1.0, 2.0, 30.0, 40.5), (50.0, 60.0, 70.0, 80.0)],
                                     'b.png': []}


def test_csv_boxes_group_rows_by_file(tmp_path):
  path = tmp_path / 'boxes.csv'
  path.write_text('\ufefffile, x0,y0,x1,y1\r\na.jpg,1,2,30,40.5\r\n\r\nb.png, 5, 6, 7, 8\r\n'
                  'a.jpg,50,60,70,8e1\r\n', encoding='utf-8')
  assert photos.read_boxes(path) == {'a.jpg': [(1.0, 2.0, 30.0, 40.5), (50.0, 60.0, 70.0, 80.0)],
                                     'b.png': [(5.0, 6.0, 7.0, 8.0)]}


@pytest.mark.parametrize('content, error', [
    ('{"a.jpg": [[1, 2, 3]]}', r"'a.jpg' box 0: a box is 4 numbers"),
    ('{"a.jpg": [1, 2, 3, 4]}', r"'a.jpg': expected a list of boxes \[\[x0, y0, x1, y1\], ...\]"),
    ('{"a.jpg": [[1, 2, 3, 4], [5, 6, 5, 9]]}', r"'a.jpg' box 1: a box needs x1 > x0 and y1 > y0"),
    ('{"a.jpg": [[1, 2, 0, 4]]}', r'x1 > x0'),
    ('{"a.jpg": [[1, 2, 3, NaN]]}', r"'a.jpg' box 0: nan is not finite"),
    ('{"a.jpg": [[1, 2, 3, Infinity]]}', r'inf is not finite'),
    ('{"a.jpg": [["1", 2, 3, 4]]}', r"'1' is not a number"),
    ('{"a.jpg": [[true, 2, 3, 4]]}', r'True is not a number'),
    ('{"a.jpg": [[1, 2, 3, 4]], "a.jpg": []}', r"'a.jpg' appears more than once"),
    ('{"a.jpg": [[1, 2, 3, 4]], " a.jpg ": []}', r"'a.jpg' appears more than once"),
    # A float64 but far past float32's whole pixels (2**24 = 16777216): nonsense landmarks.
    ('{"a.jpg": [[1, 2, 16777217, 4]]}', r"'a.jpg' box 0: 16777217 is beyond \+-2\*\*24 px"),
    ('{"a.jpg": [[1, 2, 1e39, 4]]}', r'1e\+39 is beyond'),
    ('{"a.jpg": [[-16777216.5, 2, 3, 4]]}', r'-16777216.5 is beyond'),
    # 300 digits: a float (1e299), refused as beyond; 400: past float64 (OverflowError before).
    ('{"a.jpg": [[1, 2, ' + '9' * 300 + ', 4]]}', r'9{20,}\.\.\.\(300 characters\) is beyond'),
    ('{"a.jpg": [[1, 2, ' + '9' * 400 + ', 4]]}', r'\(400 characters\) is not finite'),
    # Past Python's int-parsing limit (4300 digits): json.loads itself refuses.
    ('{"a.jpg": [[1, 2, ' + '9' * 5000 + ', 4]]}', r'cannot read the JSON \(Exceeds the limit'),
    ('{"dir/a.jpg": [[1, 2, 3, 4]]}',
     r"'dir/a.jpg' is a path; give the file name alone \('a.jpg'\)"),
    ('{"": [[1, 2, 3, 4]]}', r'the file name is empty'),
    ('[[1, 2, 3, 4]]', r'expected a JSON object .* got a list'),
    ('{"a.jpg": [[1, 2, 3, 4]]', r'not valid JSON \(line 1, column'),
])
def test_bad_json_boxes_are_refused_naming_the_file_and_key(tmp_path, content, error):
  path = tmp_path / 'boxes.json'
  path.write_text(content)
  with pytest.raises(photos.BoxesError, match=error) as raised:
    photos.read_boxes(path)
  assert str(raised.value).startswith(f'{path}: ')


@pytest.mark.parametrize('content, error', [
    ('name,x0,y0,x1,y1\na.jpg,1,2,3,4\n', r'row 1: expected the header file,x0,y0,x1,y1, got '
                                          r'name,x0,y0,x1,y1'),
    ('', r'row 1: expected the header .* got an empty file'),
    ('file,x0,y0,x1,y1\na.jpg,1,2,3,4\nb.jpg,1,2,3\n', r'row 3: expected 5 cells'),
    ('file,x0,y0,x1,y1\na.jpg,1,2,3,4\nb.jpg,1,2,abc,4\n',
     r"row 3 \(b.jpg\): 'abc' is not a number"),
    ('file,x0,y0,x1,y1\nb.jpg,1,2,1_0,4\n', r"row 2 \(b.jpg\): '1_0' is not a number"),
    ('file,x0,y0,x1,y1\nb.jpg,1,2,nan,4\n', r"row 2 \(b.jpg\): 'nan' is not finite"),
    ('file,x0,y0,x1,y1\nb.jpg,1,2,3,-inf\n', r"row 2 \(b.jpg\): '-inf' is not finite"),
    ('file,x0,y0,x1,y1\nb.jpg,10,2,3,4\n', r'row 2 \(b.jpg\): a box needs x1 > x0 and y1 > y0'),
    ('file,x0,y0,x1,y1\n,1,2,3,4\n', r'row 2: the file name is empty'),
    ('file,x0,y0,x1,y1\nsome/b.jpg,1,2,3,4\n', r"row 2: 'some/b.jpg' is a path"),
    ('file,x0,y0,x1,y1\nb.jpg,1,2,3e7,4\n', r"row 2 \(b.jpg\): '3e7' is beyond \+-2\*\*24"),
])
def test_bad_csv_boxes_are_refused_naming_the_file_and_row(tmp_path, content, error):
  path = tmp_path / 'boxes.csv'
  path.write_text(content)
  with pytest.raises(photos.BoxesError, match=error) as raised:
    photos.read_boxes(path)
  assert str(raised.value).startswith(f'{path}: ')


def test_json_keys_are_stripped_as_csv_names_are(tmp_path):
  path = tmp_path / 'boxes.json'
  path.write_text(json.dumps({' a.jpg ': [[1, 2, 30, 40]], 'b.png\t': []}))
  assert photos.read_boxes(path) == {'a.jpg': [(1.0, 2.0, 30.0, 40.0)], 'b.png': []}


@pytest.mark.parametrize('box, problem', [
    ((10, 10, 50, 50), ''),
    ((-20, -20, 0, 0), ''),  # A corner overlaps: pixel (0, 0) covers [-0.5, 0.5].
    ((-20, -20, -0.5, 5), 'lies outside the 100x60 image'),  # Ends at pixel 0's left edge.
    ((99.5, 0, 120, 10), 'lies outside'),  # Starts at pixel 99's right edge.
    ((0, 59.5, 10, 70), 'lies outside'),
    ((1e6, 1e6, 1e6 + 10, 1e6 + 10), 'lies outside'),
    ((0, 0, 1000, 1000), ''),  # 10x the longer side (100 px): allowed.
    ((0, 0, 1000.1, 10), 'is 10x the 100x60 image: over 10x'),
    ((-5e5, -5e5, 5e5, 5e5), r'is 1e\+04x the 100x60 image'),
])
def test_a_box_must_overlap_the_image_and_not_dwarf_it(box, problem):
  found = photos.box_problem(box, width=100, height=60)
  assert bool(found) == bool(problem)
  if problem:
    assert re.search(problem, found), found


def test_unreadable_boxes_file_is_a_boxes_error(tmp_path):
  with pytest.raises(photos.BoxesError, match='cannot read the boxes file'):
    photos.read_boxes(tmp_path / 'missing.json')
  (tmp_path / 'latin1.csv').write_bytes(b'file,x0,y0,x1,y1\n\xe9.jpg,1,2,3,4\n')
  with pytest.raises(photos.BoxesError, match='cannot read the boxes file'):
    photos.read_boxes(tmp_path / 'latin1.csv')


def test_boxes_are_matched_to_inputs_by_file_name(tmp_path):
  boxes = {'a.jpg': [(1.0, 2.0, 3.0, 4.0)], 'b.png': [], 'gone.jpg': [(0.0, 0.0, 1.0, 1.0)]}
  per_input, unmatched = photos.match_boxes(boxes, [tmp_path / 'x' / 'a.jpg', tmp_path / 'b.png',
                                                    tmp_path / 'y' / 'a.jpg', 'c.jpg'])
  assert per_input == [[(1.0, 2.0, 3.0, 4.0)], [], [(1.0, 2.0, 3.0, 4.0)], None]
  assert unmatched == ['gone.jpg']
