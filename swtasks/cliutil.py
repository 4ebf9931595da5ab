"""Small helpers shared by the command-line tools (argparse types, one-line user errors)."""

from __future__ import annotations

import argparse
import ast
import contextlib


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


def run_tool(main, argv=None, *, prog: str, user_errors: tuple[type[BaseException], ...] | None = None) -> int:
    """Run ``main(argv)`` for a command-line tool: a user error (:class:`swtasks.errors.UserError`, or one of
    ``user_errors``) prints one line ``PROG: error: ...`` and returns 2 (``SWTASKS_DEBUG=1`` re-raises it
    with its traceback); other exceptions (bugs) propagate with their traceback."""
    import os
    import sys

    from swtasks.errors import UserError

    # UserError is the toolkit's one user-error type (every floor's specific errors derive from it);
    # ``user_errors`` adds others for a tool that calls a library raising its own (rare)
    errors = (UserError, *(user_errors or ()))
    try:
        return int(main(argv) or 0)
    except errors as e:
        if os.environ.get("SWTASKS_DEBUG"):
            raise
        text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"{prog}: error: {text}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the body with ``torch.set_num_threads(n)`` (nothing changes when ``n`` is 0 or None) and put the
    previous count back afterwards: a tool's ``main`` called in-process (a test, a notebook) must not leave
    the process on another thread count (a different count changes the order of floating-point sums)."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
