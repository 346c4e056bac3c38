"""The project's TFDS builders; importing this package registers them with TFDS.

`NAMES` lists them so the pipeline can reject other datasets with a clear error:
  synthetic_faces  the embedded, rendered default (no download);
  w300, cofw, w300_lp, aflw2000_3d  the paper's datasets, read from the manual dir the user
    downloaded them to (each builder's MANUAL_DOWNLOAD_INSTRUCTIONS says what and where);
  face_folder  the user's own images with 68-point .pts files.
"""

from input_pipeline.datasets import aflw2000_3d
from input_pipeline.datasets import cofw
from input_pipeline.datasets import face_folder
from input_pipeline.datasets import synthetic_faces
from input_pipeline.datasets import w300
from input_pipeline.datasets import w300_lp

NAMES = ('synthetic_faces', 'w300', 'cofw', 'w300_lp', 'aflw2000_3d', 'face_folder')
