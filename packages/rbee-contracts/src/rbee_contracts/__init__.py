"""rbee's tier contracts, once: what crosses each boundary between keeper, queen, hive and worker.

Modules (import them by name; each has its own ``__all__``):

* ``ids``: the hive id, worker id, model name and repo id rules
* ``engines``: ``ENGINES``, the engine names
* ``lifecycle``: ``WorkerState``, ``HiveState``, ``ModelLoadState`` and their transition tables
* ``records``: ``WorkerRecord`` and ``Heartbeat`` (hive → queen)
* ``worker_cli``: the worker's command line and its listening line (hive → worker)
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
