"""``python -m rbee_keeper``: the same as the ``rbee`` command."""

from .cli import main

main()
