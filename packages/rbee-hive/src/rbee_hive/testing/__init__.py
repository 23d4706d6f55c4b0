"""Test helpers for the hive and for anything that runs one: never used by the hive itself.

- ``rbee_hive.testing.fake_hub``: a FAKE Hugging Face hub (the few endpoints ``snapshot_download``
  uses), served in-process by the hive's tests and as a process of its own by the end-to-end
  tests (``python -m rbee_hive.testing.fake_hub``).
"""
