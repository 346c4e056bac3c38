"""The project's TFDS builders; importing this package registers them with TFDS.

`NAMES` lists them so the pipeline can reject other datasets with a clear error. The real-data
builders (w300, cofw, w300_lp, aflw2000_3d) join here.
"""

from input_pipeline.datasets import synthetic_faces

NAMES = ('synthetic_faces',)
