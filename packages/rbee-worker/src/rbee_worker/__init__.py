"""rbee worker: runs a model and serves inference jobs.

Skeleton only: nothing is implemented yet.
"""

__version__ = "0.1.0"
