"""rbee keeper: the ``rbee`` command line. It talks only to the queen (docs/tiers.md, keeper).

Modules: ``cli`` (the click commands), ``runner`` (one job: create, stream, Ctrl+C, exit codes),
``render`` (narration, progress bars, tokens, results; or JSON Lines), ``services`` (the local
queen and hive as background processes), ``config`` (settings and where they come from).
"""

__version__ = "0.1.0"
