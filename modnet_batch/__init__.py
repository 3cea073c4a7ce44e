"""modnet-batch: batch, distributed evaluation and matting for the MODNet portrait-matting model."""

__version__ = "0.1.0"
