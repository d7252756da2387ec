"""CLI options take their defaults from the library: --help shows the library's value, and an
option left out is not passed on, so the library's own default applies."""

from __future__ import annotations

import argparse
import inspect

from birdnet_tf.cli import LibraryDefault, build_parser, given


def _subparsers(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name), sub
                yield from _subparsers(sub, (*prefix, name))


def test_help_shows_the_library_defaults():
    checked = 0
    for names, sub in _subparsers(build_parser()):
        text = " ".join(sub.format_help().split())  # argparse wraps lines
        for action in sub._actions:
            if not isinstance(action.default, LibraryDefault):
                continue
            assert "%(default)s" in (action.help or ""), f"{' '.join(names)} {action.option_strings}: help hides it"
            value = action.default.value()
            shown = " ".join(value) if isinstance(value, (list, tuple)) else str(value)
            assert f"default: {shown}" in text, (names, action.option_strings, shown)
            checked += 1
    assert checked >= 25


def test_library_defaults_are_the_functions_own():
    from birdnet_tf.data.sort import sort_dataset
    from birdnet_tf.infer.ensemble import fit_ensemble

    parser = build_parser()
    args = parser.parse_args(["ensemble", "a.csv", "--targets", "t", "--out", "o"])
    assert args.trials.value() == inspect.signature(fit_ensemble).parameters["trials"].default
    args = parser.parse_args(["sort", "src", "--out", "o"])
    assert args.val_fraction.value() == inspect.signature(sort_dataset).parameters["val_fraction"].default == 0.1
    help_text = " ".join(parser._subparsers._group_actions[0].choices["sort"].format_help().split())
    assert "(default: 0.1)" in help_text and "(default: 1337)" in help_text


def test_options_left_out_are_not_passed_on():
    args = build_parser().parse_args(["ensemble", "a.csv", "--targets", "t", "--out", "o", "--trials", "5"])
    assert given(args, "method", "trials", "steps", "seed", "split") == {"trials": 5}
    args = build_parser().parse_args(["evaluate", "run", "--model", "last.keras"])
    assert given(args, "split", model_file="model") == {"model_file": "last.keras"}
