"""`python -m lodestar.emulator emulate|replay ...`: the two commands without the main CLI (same flags).

Consumes: command-line arguments. Produces: what `lodestar emulate` / `lodestar replay` do; user mistakes print
`error: ...` on one line and exit with status 2.
"""

from __future__ import annotations

import sys

import typer

from lodestar.emulator.cli import register
from lodestar.errors import UserError


def main() -> None:
    app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False)
    register(app)
    try:
        app(standalone_mode=True)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
