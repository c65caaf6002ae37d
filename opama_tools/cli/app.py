"""The typer application that every ``opama`` subcommand registers on."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

app = typer.Typer(
    name="opama",
    help=(
        "Text-guided 360° image outpainting (OPa-Ma): from HDR captures to a benchmark table.\n\n"
        "Example: opama demo   (synthetic data, tiny model, no downloads)"
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)

console = Console(soft_wrap=True)  # messages are lines: never hard-wrapped at the terminal width
err_console = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 1) -> "typer.Exit":
    """Print a one-line error to stderr and return the typer.Exit to raise (``message`` is plain text)."""
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()
