"""Hyperparameter search over recipe settings with Keras Tuner (``birdnet-tf tune``)."""
