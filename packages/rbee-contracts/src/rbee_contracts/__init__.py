"""rbee's tier contracts, once: what crosses each boundary between keeper, queen, hive and worker.

Modules (import them by name; each has its own ``__all__``):

* ``ids``: the hive id, worker id, model name and repo id rules
* ``values``: the http(s) URL, interval and absolute path rules
* ``engines``: ``ENGINES``, the engine names, and the engine arguments known without the engine
* ``lifecycle``: ``WorkerState``, ``HiveState``, ``ModelLoadState`` and their transition tables
* ``records``: ``WorkerRecord`` and ``Heartbeat`` (hive → queen)
* ``queen_ops``: the queen's operations' parameters (keeper → queen), extending the ones below
* ``queen_results``: the queen's own results (keeper ← queen): ``status``, ``hive_list``,
  ``hive_status``, ``hive_start``, ``hive_stop``
* ``hive_ops``: the hive's operations' parameters and results (queen → hive), the device rule
* ``infer``: ``infer``'s parameters, stream deltas and result (queen → worker)
* ``hive_cli``: the hive's command line as a queen starts it (queen → hive)
* ``worker_cli``: the worker's command line and its listening line (hive → worker)
* ``auth``: the queen's secret, the tokens derived from it, token files and env names
* ``reading``: ``read_result``, reading another tier's result (unknown keys dropped, known
  fields strict)
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
