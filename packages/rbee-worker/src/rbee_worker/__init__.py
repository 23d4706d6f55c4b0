"""rbee worker: runs one model with one engine and serves ``infer`` as jobproto jobs.

The command is ``rbee-worker`` (``rbee_worker.app:main``); the app factory is
``rbee_worker.app.create_app(settings)``; engines live in ``rbee_worker.engines``.
"""

__version__ = "0.1.0"
