"""The package's layering (birdnet_tf/__init__.py): ``frontend/`` and ``data/`` import nothing above them,
and the frontend package loads its parts (TensorFlow, Keras) only when they are used."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "birdnet_tf"
#: What each checked layer may import from the package (besides itself).
ALLOWED = {
    "frontend": {"errors", "config", "fileio", "grid", ""},
    "data": {"errors", "config", "fileio", "grid", "", "frontend"},
}


def imported_parts(path: Path) -> set[str]:
    """The top-level part of ``birdnet_tf`` (``data``, ``models``, ``""`` for the package itself)
    of every import in ``path``, at module level or inside functions."""
    parts = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
        for name in names:
            if name == "birdnet_tf" or name.startswith("birdnet_tf."):
                parts.add(name.split(".")[1] if "." in name else "")
    return parts


def test_frontend_and_data_import_nothing_above_them():
    checked, wrong = 0, []
    for layer, allowed in ALLOWED.items():
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            checked += 1
            wrong += [f"{path.relative_to(PACKAGE)} imports birdnet_tf.{p}" for p in
                      imported_parts(path) - allowed - {layer}]
    assert checked >= 20 and not wrong, wrong


def test_layer_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from birdnet_tf.cli import main\n    import birdnet_tf.models.build\n")
    assert imported_parts(bad) == {"cli", "models"}


def test_no_module_imports_the_frontend_package_for_its_side_effects():
    """``import birdnet_tf.frontend`` registers no Keras layer (its names load on first use):
    a module that needs the layers registered calls ``birdnet_tf.frontend.register_layers()``."""
    bare = [str(path.relative_to(PACKAGE)) for path in sorted(PACKAGE.rglob("*.py"))
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Import) and any(a.name == "birdnet_tf.frontend" for a in node.names)]
    assert not bare, f"use birdnet_tf.frontend.register_layers() instead of a bare import in {bare}"


def test_chunk_jobs_import_without_tensorflow():
    """extract's parent process stays free of TensorFlow and Keras, so its workers can be forked."""
    code = ("import sys\n"
            "import birdnet_tf.data.extract, birdnet_tf.data.prepare, birdnet_tf.frontend.chunks\n"
            "print(sorted({'tensorflow', 'keras'} & set(sys.modules)))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=PACKAGE.parent)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr[-2000:])


def test_every_frontend_name_imports_from_the_package_and_its_layers_register_by_name():
    import keras

    import birdnet_tf.frontend as fe

    old_names = {"FILTERBANKS", "MEL_BREAK_HZ", "MEL_Q", "PACKAGE", "PCEN", "BandCentering", "ChunkSpectrogram",
                 "MagnitudeScaling", "MelSpectrogram", "SpecAugment", "check_learnable_frontend", "frame_blocks",
                 "frontend_layers", "hz_to_mel", "mel_to_hz", "pcen_smoothing_coefficient", "spec_augment_layer",
                 "triangular_filterbank"}  # the public names of the old frontend.py
    assert old_names <= set(fe.__all__)
    assert all(getattr(fe, name) is not None for name in fe.__all__)  # every re-export resolves

    fe.register_layers()
    for name in ("MelSpectrogram", "MagnitudeScaling", "PCEN", "SpecAugment", "BandCentering", "ChunkSpectrogram"):
        assert keras.saving.get_registered_object(f"birdnet_tf>{name}") is getattr(fe, name), name
