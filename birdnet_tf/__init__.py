"""birdnet-tf: bird species recognition from audio with TensorFlow 2 / Keras 3.

Nothing happens at import: subpackages load TensorFlow only when used.
"""

__version__ = "0.1.0"
