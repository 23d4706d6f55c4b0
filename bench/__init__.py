"""rbee's performance benchmark: ``nox -s bench`` (or ``python -m bench``); see ``bench/run.py``."""
