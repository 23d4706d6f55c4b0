"""rbee hive: one per machine. Spawns and supervises workers, keeps the models on disk, and
reports to the queen with a heartbeat (docs/tiers.md, hive). Listens on :9000 by default.

Modules: ``settings`` (HiveSettings), ``supervisor`` (worker processes), ``models`` (catalog and
downloads), ``capabilities`` (CPU, RAM, GPUs), ``registration`` (heartbeat), ``operations`` (the
jobproto operations), ``hive`` (the state they share), ``app`` (create_app and the command).
"""

__version__ = "0.1.0"
