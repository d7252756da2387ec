"""The TensorFlow-free runtime: ``birdnet-tf tflite`` outputs scored with LiteRT (see :mod:`.runtime`).

Nothing under ``birdnet_tf.lite`` imports TensorFlow or Keras, so ``pip install
'birdnet-tf[lite]'`` (no TensorFlow) can run ``birdnet-tf predict TFLITE_FOLDER AUDIO… --out …``, and
with pyarrow (``'birdnet-tf[embed]'``) ``birdnet-tf embed TFLITE_FOLDER AUDIO… --out DB`` and ``search``.
"""

from birdnet_tf.lite.runtime import LiteModel, TFLiteModel, is_tflite_folder, sidecar_path

__all__ = ["LiteModel", "TFLiteModel", "is_tflite_folder", "sidecar_path"]
