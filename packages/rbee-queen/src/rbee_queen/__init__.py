"""rbee queen: the orchestrator (planned to listen on :8500).

Skeleton only: nothing is implemented yet.
"""

__version__ = "0.1.0"
