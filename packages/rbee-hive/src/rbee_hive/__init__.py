"""rbee hive: per-machine manager (planned to listen on :9000).

Skeleton only: nothing is implemented yet.
"""

__version__ = "0.1.0"
