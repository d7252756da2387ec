"""Recipes: packaged and found by name, inheriting a base, kept in step with pipelines/, and
``birdnet-tf config --check``."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from birdnet_tf.config import RECIPES_DIR, Config, load_config, merge_recipes, read_recipe, recipe_names
from birdnet_tf.errors import ConfigError
from conftest import run_cli

REPO = Path(__file__).resolve().parents[1]


def test_pipelines_are_links_to_the_packaged_recipes():
    """pipelines/ is the user-facing view: each recipe there is a link to the packaged one (no copy to drift)."""
    names = recipe_names()
    assert {"default", "ofai2018_audio", "ofai2018_combined", "kahl2018_baseline"} <= set(names)
    linked = sorted(p.stem for p in (REPO / "pipelines").glob("*.yaml"))
    assert linked == names
    for name in names:
        link = REPO / "pipelines" / f"{name}.yaml"
        assert link.is_symlink(), f"{link} should be a link to birdnet_tf/recipes/{name}.yaml"
        assert link.resolve() == (RECIPES_DIR / f"{name}.yaml").resolve()


@pytest.mark.parametrize("name", ["ofai2018_audio", "ofai2018_audio.yaml"])
def test_packaged_recipe_found_by_name(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not from a source checkout: no pipelines/ here
    assert load_config(name) == load_config(RECIPES_DIR / "ofai2018_audio.yaml")
    assert load_config(name).frontend.magnitude == "pow_learn"
    rc, out, _ = run_cli(["config", "--config", "ofai2018_combined"])
    assert rc == 0 and "use: combined" in out and "magnitude: pow_learn" in out


def test_unknown_recipe_names_the_packaged_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="nosuch.*does not exist.*ofai2018_audio"):
        load_config("nosuch")


def test_combined_recipe_is_the_audio_recipe_plus_metadata():
    data = read_recipe("ofai2018_combined")
    assert "base" not in data and "combined audio + metadata" in data["description"]
    own = set(read_recipe_file_keys(RECIPES_DIR / "ofai2018_combined.yaml"))
    assert own == {"base", "description", "metadata"}
    audio, combined = load_config("ofai2018_audio"), load_config("ofai2018_combined")
    assert dataclasses.replace(combined, metadata=audio.metadata) == audio
    assert combined.metadata.use == "combined"


def read_recipe_file_keys(path: Path) -> list[str]:
    import yaml

    return list(yaml.safe_load(path.read_text(encoding="utf-8")))


def test_child_merges_over_base_and_lists_replace(tmp_path):
    (tmp_path / "base.yaml").write_text("description: the base\ntrain:\n  epochs: 7\n  optimizer: adam\n"
                                        "metadata:\n  hidden: [256, 512]\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain:\n  epochs: 3\nmetadata:\n  hidden: [64]\n")
    (tmp_path / "grandchild.yaml").write_text("base: child\ndata:\n  seed: 5\n")  # without .yaml, beside it
    cfg = load_config(tmp_path / "grandchild.yaml")
    assert (cfg.train.epochs, cfg.train.optimizer, cfg.data.seed) == (3, "adam", 5)
    assert cfg.metadata.hidden == (64,)  # a list replaces the base's whole
    assert cfg.model == Config().model
    assert "description" not in read_recipe(tmp_path / "child.yaml")  # the base's description is not inherited
    assert merge_recipes({"a": {"b": 1, "c": 2}, "l": [1, 2]}, {"a": {"b": 3}, "l": [9]}) == \
        {"a": {"b": 3, "c": 2}, "l": [9]}


def test_a_base_can_be_a_packaged_recipe(tmp_path):
    (tmp_path / "mine.yaml").write_text("base: ofai2018_audio\ntrain:\n  epochs: 2\n")
    cfg = load_config(tmp_path / "mine.yaml")
    assert cfg.train.epochs == 2 and cfg.frontend.magnitude == "pow_learn"


def test_inheritance_loop_and_missing_base_are_clear_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a\n")
    with pytest.raises(ConfigError, match=r"loop \(a.yaml -> b.yaml -> a.yaml\)"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "self.yaml").write_text("base: self.yaml\n")
    with pytest.raises(ConfigError, match="loop"):
        load_config(tmp_path / "self.yaml")
    (tmp_path / "orphan.yaml").write_text("base: gone.yaml\n")
    with pytest.raises(ConfigError, match="orphan.yaml: base recipe 'gone.yaml' does not exist"):
        load_config(tmp_path / "orphan.yaml")
    (tmp_path / "odd.yaml").write_text("base: [a, b]\n")
    with pytest.raises(ConfigError, match="odd.yaml: base must name one recipe"):
        load_config(tmp_path / "odd.yaml")


def test_wheel_contains_the_recipes(tmp_path):
    """A non-editable install has the recipes: they are package data of the wheel."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "birdnet_tf", src / "birdnet_tf", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                    "-w", str(tmp_path / "wheel")], check=True, capture_output=True)
    wheel, = (tmp_path / "wheel").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"birdnet_tf/recipes/{n}.yaml" for n in recipe_names()} <= names


def test_config_check_passes_the_shipped_recipes():
    from birdnet_tf.recipe_check import check_config

    for name in recipe_names():
        assert check_config(load_config(name)) == [], name


def test_config_check_lists_every_problem():
    rc, out, err = run_cli(["config", "--check", "default", "--set", "frontend.kind=chunks",
                            "--set", "chunks.overlap_s=3", "--set", "model.temporal_pooling=foo:2",
                            "--set", "distill.alpha=2"])
    assert rc == 2, out + err
    assert "default: 5 problem(s)" in err
    for expected in ["audio.sample_rate_hz = chunks.sample_rate_hz (22050 != 44100)",
                     "data.excerpt_s = chunks.chunk_s (3.0 != 1.0)", "chunks.overlap_s must be in",
                     "unknown temporal pooling 'foo:2'", "distill.alpha must be within [0, 1]"]:
        assert expected in err
    rc, out, err = run_cli(["config", "--config", "default", "--check", "--set", "data.excerpt_s=0.5"])
    assert rc == 2 and "shorter than the ismir2016 model's receptive field" in err
    rc, out, err = run_cli(["config", "--check", "demo"])
    assert rc == 0 and "demo: no problems found" in out


def test_one_parser_for_kind_param_settings():
    import re

    from birdnet_tf.config import split_kind

    assert split_kind(" logmeanexp : 2 ") == ("logmeanexp", "2")
    assert split_kind("max") == ("max", None)
    assert split_kind("ce_bgtopk:") == ("ce_bgtopk", "")
    # the package splits kind:param strings nowhere else (host:port and tensor names are not settings)
    pattern = re.compile(r"""(?<!r)partition\(\s*["']:["']\s*\)""")
    found = [f"{p.relative_to(REPO)}:{i}" for p in sorted((REPO / "birdnet_tf").rglob("*.py"))
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert len(found) == 1 and found[0].startswith("birdnet_tf/config.py:"), found
