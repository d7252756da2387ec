"""Search spaces: a YAML file that maps recipe settings to the values a search may try.

Every key is a dotted setting that ``--set`` accepts (``train.learning_rate``); its value is
one of::

    model.width: [0.25, 0.5, 1.0]                     # a choice (shorthand)
    model.name: {choice: [ismir2016, kahl2018_resnet]}
    train.learning_rate: {min: 1e-4, max: 1e-2, log: true}   # float range, log-uniform
    data.excerpt_s: {min: 2.0, max: 5.0, step: 0.5}   # float range on a grid
    model.resnet_n: {min: 1, max: 3, when: {model.name: kahl2018_resnet}}   # int range (both ints)
    model.batch_norm: bool                            # true or false
    augment.noise_snr_db: [[3, 30], [10, 40]]         # a tuple-valued setting: choices of lists

A range is an integer range when ``min`` and ``max`` are both integers and the setting is an
``int``, else a float range; ``log: true`` samples log-uniformly (``min`` > 0). ``when`` makes a
setting searched only while another searched setting (a choice or bool) has one of the given
values (Keras Tuner's conditional scopes); otherwise the recipe's value holds.

Each value the space can give is checked against the config before a search starts, so an
unknown key gets the message ``--set`` gives and a value of the wrong type is named.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from birdnet_tf.config import Config
from birdnet_tf.errors import ConfigError

__all__ = ["Param", "SearchSpace", "load_space", "parse_space"]

KINDS = ("choice", "int", "float", "bool")


@dataclass(frozen=True)
class Param:
    """One searched setting."""

    key: str  # dotted recipe key, also the Keras Tuner hyperparameter name
    kind: str  # choice | int | float | bool
    values: tuple = ()  # choice: the values (lists given for tuple settings become "a,b" strings)
    min: float | None = None
    max: float | None = None
    step: float | None = None
    log: bool = False
    when: dict[str, tuple] = field(default_factory=dict)  # parent key -> values that activate this one

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind}
        if self.kind == "choice":
            d["values"] = list(self.values)
        if self.kind in ("int", "float"):
            d.update(min=self.min, max=self.max, step=self.step, log=self.log)
        if self.when:
            d["when"] = {k: list(v) for k, v in self.when.items()}
        return d

    def describe(self) -> str:
        if self.kind == "choice":
            text = "{" + ", ".join(map(str, self.values)) + "}"
        elif self.kind == "bool":
            text = "{true, false}"
        else:
            text = f"[{self.min:g}, {self.max:g}]" + (" log" if self.log else "") + \
                (f" step {self.step:g}" if self.step else "")
        if self.when:
            text += " when " + " and ".join(f"{k} in {list(v)}" for k, v in self.when.items())
        return f"{self.key}: {text}"


@dataclass(frozen=True)
class SearchSpace:
    """The parsed space, in file order (a parent before the settings it conditions)."""

    params: tuple[Param, ...]
    source: str = "space"

    def to_dict(self) -> dict[str, Any]:
        return {p.key: p.to_dict() for p in self.params}

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def declare(self, hp) -> None:
        """Declares the settings as Keras Tuner hyperparameters on ``hp`` (conditions as scopes)."""
        import contextlib

        for p in self.params:
            with contextlib.ExitStack() as stack:
                for parent, values in p.when.items():
                    stack.enter_context(hp.conditional_scope(parent, list(values)))
                if p.kind == "choice":
                    hp.Choice(p.key, list(p.values), ordered=False if isinstance(p.values[0], str) else None)
                elif p.kind == "bool":
                    hp.Boolean(p.key)
                elif p.kind == "int":
                    hp.Int(p.key, int(p.min), int(p.max), step=int(p.step) if p.step else None,
                           sampling="log" if p.log else "linear")
                else:
                    hp.Float(p.key, float(p.min), float(p.max), step=p.step,
                             sampling="log" if p.log else "linear")

    def overrides(self, values: dict[str, Any]) -> dict[str, Any]:
        """``{dotted key: value}`` of a trial's active values (Keras Tuner's own ``tuner/…`` left out)."""
        known = set(self.keys)
        return {k: v for k, v in values.items() if k in known}


def load_space(path: str | os.PathLike, base: Config | None = None) -> SearchSpace:
    """Reads and checks a space YAML file (see the module docstring) against ``base`` (default config)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: search space file does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except Exception as e:  # noqa: BLE001 - any parser error becomes one clear message
        raise ConfigError(f"{p}: cannot parse the search space: {e}") from None
    return parse_space(data, base, str(p))


def parse_space(data: Any, base: Config | None = None, source: str = "space") -> SearchSpace:
    """A :class:`SearchSpace` from the mapping of a space file; raises ConfigError naming ``source``."""
    base = base or Config()
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{source}: a search space must be a non-empty mapping of settings "
                          "(e.g. train.learning_rate: {min: 1e-4, max: 1e-2, log: true})")
    params: list[Param] = []
    for key, spec in data.items():
        key = str(key).strip()
        where = f"{source}: {key}"
        base.replace({key: _current(base, key)}, source)  # an unknown key: the same message as --set
        params.append(_parse_param(key, spec, base, where))
    by_key = {p.key: p for p in params}
    for i, p in enumerate(params):
        for parent, values in p.when.items():
            q = by_key.get(parent)
            if q is None or params.index(q) > i:
                raise ConfigError(f"{source}: {p.key}: its condition names {parent}, which must be a searched "
                                  "choice or bool listed before it")
            if q.kind not in ("choice", "bool"):
                raise ConfigError(f"{source}: {p.key}: its condition's {parent} must be a choice or bool, "
                                  f"not a {q.kind} range")
            possible = q.values if q.kind == "choice" else (True, False)
            bad = [v for v in values if v not in possible]
            if bad:
                raise ConfigError(f"{source}: {p.key}: its condition gives {parent} value(s) {bad} that the space "
                                  f"never tries ({list(possible)})")
    return SearchSpace(tuple(params), source)


def _current(cfg: Config, key: str) -> Any:
    section, _, name = key.partition(".")
    return cfg.to_dict().get(section, {}).get(name)


def _check_value(base: Config, key: str, value: Any, where: str) -> Any:
    """The value as the config takes it (coerced), or ConfigError naming ``where``."""
    try:
        cfg = base.replace({key: value}, where)
    except ConfigError as e:
        raise ConfigError(str(e)) from None
    return _current(cfg, key)


def _parse_param(key: str, spec: Any, base: Config, where: str) -> Param:
    current = _current(base, key)
    when: dict[str, tuple] = {}
    if isinstance(spec, str) and spec.strip().lower() in ("bool", "boolean"):
        spec = {"bool": True}
    if isinstance(spec, list):
        spec = {"choice": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a list of choices, 'bool', or a mapping with choice / min+max / "
                          f"bool, not {spec!r}")
    spec = dict(spec)
    raw_when = spec.pop("when", None)
    if raw_when is not None:
        if not isinstance(raw_when, dict) or not raw_when:
            raise ConfigError(f"{where}: 'when' must map a searched setting to its value(s), e.g. "
                              "{model.name: kahl2018_resnet}")
        for parent, values in raw_when.items():
            values = values if isinstance(values, list) else [values]
            when[str(parent)] = tuple(_check_value(base, str(parent), v, f"{where}: when") for v in values)
    known = {"choice", "min", "max", "step", "log", "bool"}
    unknown = set(spec) - known
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}; "
                          f"known: {', '.join(sorted(known | {'when'}))}")
    if "bool" in spec:
        if not isinstance(current, bool):
            raise ConfigError(f"{where}: is a {type(current).__name__} setting, not a bool")
        return Param(key, "bool", when=when)
    if "choice" in spec:
        values = spec["choice"]
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: a choice needs a non-empty list of values")
        out = []
        for v in values:
            v = _check_value(base, key, list(v) if isinstance(v, (list, tuple)) else v, where)
            if isinstance(v, tuple):  # a tuple setting: Keras Tuner's choices are scalars, the config parses "a,b"
                v = ",".join(map(str, v))
            out.append(v)
        if len({type(v) for v in out}) > 1:
            raise ConfigError(f"{where}: choices must all be of one type, got {out!r}")
        if len(set(out)) != len(out):
            raise ConfigError(f"{where}: choices repeat a value: {out!r}")
        return Param(key, "choice", values=tuple(out), when=when)
    if "min" not in spec or "max" not in spec:
        raise ConfigError(f"{where}: a range needs both min and max (or give a list of choices)")
    lo, hi = (_number(spec[k], f"{where}: {k}") for k in ("min", "max"))
    if isinstance(current, bool) or not isinstance(current, (int, float)):
        raise ConfigError(f"{where}: a range needs a numeric setting; {key} is a {type(current).__name__}")
    if not lo < hi:
        raise ConfigError(f"{where}: empty range: min {lo:g} must be below max {hi:g} (for one value, "
                          "leave the setting out of the space and --set it)")
    log = bool(spec.get("log", False))
    if log and lo <= 0:
        raise ConfigError(f"{where}: a log range needs min > 0, got {lo:g}")
    step = spec.get("step")
    if step is not None:
        step = _number(step, f"{where}: step")
        if step <= 0 or step > hi - lo:
            raise ConfigError(f"{where}: step must be > 0 and at most max - min ({hi - lo:g}), got {step:g}")
        if log:
            raise ConfigError(f"{where}: give either step or log, not both")
    is_int = isinstance(current, int)
    if is_int and not all(float(v).is_integer() for v in (lo, hi, step if step is not None else 1)):
        raise ConfigError(f"{where}: {key} is an int setting; min, max and step must be whole numbers")
    for v in (lo, hi):
        _check_value(base, key, int(v) if is_int else float(v), where)
    return Param(key, "int" if is_int else "float", min=lo, max=hi, step=step, log=log, when=when)


def _number(value: Any, where: str) -> float:
    try:
        x = float(value)  # YAML reads 1e-4 as a string
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not a number") from None
    if not math.isfinite(x) or isinstance(value, bool):
        raise ConfigError(f"{where}: {value!r} is not a finite number")
    return x
