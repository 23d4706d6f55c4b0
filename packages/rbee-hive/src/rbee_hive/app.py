"""Entry point for the `rbee-hive` command (not implemented yet)."""

import sys
from typing import NoReturn


def main() -> NoReturn:
    """Report that this tier is not implemented yet and exit with status 2."""
    print("rbee-hive: not implemented yet", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    main()
