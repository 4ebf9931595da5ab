"""Small helpers shared by the command-line tools (argparse types)."""

from __future__ import annotations

import argparse
import ast


def key_value(text: str) -> tuple[str, object]:
    """argparse type for ``--set KEY=VALUE``: VALUE is a Python literal, or else kept as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value  # a bare word: keep it as a string


def add_override_option(parser: argparse.ArgumentParser, help: str = "model override (repeatable)") -> None:
    """``--set KEY=VALUE`` (repeatable) into ``args.overrides``, a list of (key, value) pairs."""
    parser.add_argument(
        "--set", dest="overrides", action="append", type=key_value, default=[], metavar="KEY=VALUE", help=help
    )
