"""Input pipeline: the synthetic face renderer, TFDS builders and tf.data."""
