"""birdnet-tf: bird species recognition from audio with TensorFlow 2 / Keras 3.

Nothing happens at import: subpackages load TensorFlow only when used.

Layers, lowest first; a module imports only from its own layer and the ones below it
(``tests/test_layers.py`` checks ``frontend/`` and ``data/``):

1. ``errors``, ``config``, ``fileio``, ``grid`` (window grids, NumPy only): foundations;
2. ``frontend/``: signal processing, waveform → spectrogram (STFT, mel, the 2018 baseline's
   chunks and signal/noise rule in NumPy / TF ops; the Keras frontend layers);
3. ``data/``: decoding, catalogs, labels, splits, the ``prepare`` / ``extract`` jobs on one
   runner (``data/jobs.py``), the chunk-folder format, ``tf.data`` pipelines;
4. ``models/``: backbones, heads, model building;
5. ``train/``, ``evaluate/``, ``infer/``, ``distill/``, ``tune/``, ``export``, ``tflite``, ``serve``;
6. ``cli``.
"""

__version__ = "0.1.0"
