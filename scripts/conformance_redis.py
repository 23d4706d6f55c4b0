"""The shipped conformance suite against the reference service keeping its jobs in Redis.

``python scripts/conformance_redis.py [ARGS]`` (what ``nox -s conformance`` runs after the suite
against the in-memory reference service): starts a private ``redis-server`` on a loopback port
with a password (``jobproto.testing.redis_server``; Debian's ``redis-server`` must be installed,
as ``.ci/run`` does) and runs ``python -m jobproto.conformance ARGS`` with the server's URL in
``JOBPROTO_STORE_URL``: every reference service the suite starts (in-process, in a process of
its own, with a token) then keeps its jobs in that Redis, each under a namespace of its own, and
the whole suite runs against it, the checks of limits and tokens included. The password is in
the environment only, never in an argument list. The exit status is the suite's.

The in-memory and the Redis store must pass the same suite: what a client sees may not depend on
where the service keeps its jobs.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys


def main(argv: list[str]) -> int:
    from redis import Redis

    from jobproto.conformance._server import STORE_ENV
    from jobproto.testing import redis_server

    with redis_server(password=secrets.token_hex(12)) as redis:
        print(f"conformance on Redis: redis-server on 127.0.0.1:{redis.port}", flush=True)
        command = [sys.executable, "-m", "jobproto.conformance", *argv]
        env = {**os.environ, STORE_ENV: redis.url}
        code = subprocess.run(command, env=env, check=False).returncode
        # the jobs went to Redis, not to the servers' memory
        if code == 0 and not Redis.from_url(redis.url).keys("jobproto-conformance-*:job:*"):
            print("conformance on Redis: no job reached Redis", file=sys.stderr, flush=True)
            return 1
        return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
