"""rbee keeper: the `rbee` command-line interface.

Skeleton only: nothing is implemented yet.
"""

__version__ = "0.1.0"
