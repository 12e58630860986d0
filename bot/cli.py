"""The ``loopbot`` command: parses arguments and dispatches to ``bot.commands.<area>``.

Each area module exposes ``register(subparsers)``, adding its sub-commands with
``parser.set_defaults(handler=fn)``; ``fn(args, settings) -> int`` is the exit code. A handler only
translates arguments into a use case (``bot.usecases``) and its result into lines. Errors the user
can fix (``bot.usecases.errors.user_errors``) are printed without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from bot.commands import AREAS
from bot.settings import load_settings
from bot.usecases.errors import user_errors


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, every area registered."""
    parser = argparse.ArgumentParser(prog="loopbot", description=__doc__.splitlines()[0] if __doc__ else None)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for area in AREAS:
        area.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``loopbot`` console command."""
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
        logging.basicConfig(
            level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        # With other processes on few cores, OpenMP threads that spin while waiting stall torch badly
        # (a small matmul: 142 ms spinning vs 7 ms passive, measured on 2 shared cores).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        if settings.model.offline:
            # Nothing may be fetched from a model hub at run time; fail fast and clearly instead.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        return int(args.handler(args, settings) or 0)
    except user_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
