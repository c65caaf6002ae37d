"""``opama`` command line. Each subcommand lives in its own module and only parses
arguments and delegates to library functions (which the tests call directly)."""

from __future__ import annotations

from opama_tools.cli.app import app

# Importing the modules registers their commands on ``app`` (order = order in --help).
from opama_tools.cli import (  # noqa: E402,F401
    prepare,
    caption,
    crop,
    train,
    outpaint,
    evaluate,
    demo,
    doctor,
    convert_reference,
)

__all__ = ["app", "main"]


def main() -> None:
    app()
