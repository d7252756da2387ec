"""Installs the birdnet_tf package and the ``birdnet-tf`` command."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "birdnet_tf" / "__init__.py").read_text()).group(1)

# Pins: a set measured to resolve and work together on Python 3.11, 3.12 and 3.13
# (see README "Dependencies"). tensorflow-io is deliberately absent.
#
# The base install is the TensorFlow-free runtime: `birdnet-tf predict` on a folder written
# by `birdnet-tf tflite` (birdnet_tf.lite, LiteRT). Everything else (training, SavedModel
# export and inference, serving, tuning) needs the `train` extra; `dev` includes it.
LITE_REQUIRES = [
    "numpy==2.4.6",
    "pandas==3.1.1",
    "soundfile==0.14.0",
    "soxr==1.1.0",
    "tqdm==4.70.1",
    "pyyaml==6.0.3",
    "ai-edge-litert==2.3.0",  # runs exported TFLite models (tf.lite.Interpreter is deprecated)
]
TRAIN_REQUIRES = [
    "tensorflow==2.21.0",
    "keras==3.15.1",
    "matplotlib==3.11.2",
    "tensorboard==2.21.0",
    "opencv-python-headless==5.0.0.93",  # PNG chunks and the baseline's signal/noise rule (headless: no GUI aborts)
    "aiohttp==3.14.5",  # birdnet-tf serve (TF Serving REST API)
    "tensorflow-serving-api==2.21.0",  # gRPC client for TF Serving
    "keras-tuner==1.4.8",  # birdnet-tf tune (needs tensorboard, above: without it every trial fails silently)
    "pyarrow==25.0.0",  # embedding databases (birdnet-tf embed / search: Parquet parts); Beam caps it below 26
]
# birdnet-tf batch: whole-recording inference as an Apache Beam pipeline (archives of many files);
# pyarrow writes its Parquet tables. Beam 2.77 caps pillow, protobuf and python-dateutil (constraints.txt).
BEAM = ["apache-beam==2.77.0", "pyarrow==25.0.0"]
EXTRAS = {
    "train": TRAIN_REQUIRES,  # the full install: pip install 'birdnet-tf[train]'
    "lite": [],  # the base install, named: pip install 'birdnet-tf[lite]' (no TensorFlow)
    # embed / search on a birdnet-tf tflite folder without TensorFlow: the base install plus pyarrow (Parquet)
    "embed": ["pyarrow==25.0.0"],
    "beam": TRAIN_REQUIRES + BEAM,  # birdnet-tf batch (runs the SavedModel engine: needs TensorFlow)
    # the full install plus reference implementations used by tests and benchmarks (and beam, so CI runs its tests)
    "dev": TRAIN_REQUIRES + ["pytest==9.2.0", "pytest-xdist==3.8.0", "librosa==0.11.0", "scikit-learn==1.9.1", "scipy==1.17.1",
                             "psutil==7.2.2",
                             "optuna==5.0.0",  # birdnet-tf ensemble --method optuna (TPE weight search)
                             *BEAM],
}

setup(
    name="birdnet-tf",
    version=VERSION,
    description="Bird species recognition from audio recordings with TensorFlow 2 / Keras 3",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["birdnet_tf", "birdnet_tf.*"]),
    package_data={"birdnet_tf": ["recipes/*.yaml", "distill/birdnet_env.sh"]},
    python_requires=">=3.11,<3.14",
    install_requires=LITE_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["birdnet-tf=birdnet_tf.cli:main"]},
)
