"""rbee queen: the orchestrator (``rbee-queen``, port 8500).

Keeps the registry of hives (registered and kept alive by their heartbeats) and of their workers,
forwards hive and model operations to the hive named, and routes ``infer`` straight to the least
busy worker with the model, starting one through a hive when there is none. See ``docs/tiers.md``
§queen for the contract and ``packages/rbee-queen/README.md`` for how it is built.

Modules: ``settings`` (QueenSettings), ``registry`` (hives, workers, liveness: pure),
``scheduler`` (choices: pure; starting workers: single-flight), ``hives`` (hive processes on this
machine), ``remote`` (relays to hives and workers), ``params`` + ``operations`` (the operations),
``routes`` (``/v1/hives``), ``queen`` (the state object), ``app`` (``create_app``, ``main``).
"""

__version__ = "0.1.0"
