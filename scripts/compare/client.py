#!/usr/bin/env python3
"""The client workload of `tandem bench compare`, the same for every system.

K connections, one thread each, each doing INCR on its own key every
`--period-ms` (paced, not flat out: latency is the service's, not a queue's)
from `--start-at` (a Unix time, so the bench can place its fault on the same
clock) for `--duration` seconds. A request that fails is recorded with its
kind (reset, timeout, refused, unreachable, closed, no-master, readonly,
error-reply, wrong-reply, other), the client is dropped, and the next request
(at the next tick) reconnects:

- `--mode plain`: to HOST:PORT (the VIP of tandem or keepalived);
- `--mode sentinel`: through redis-py's Sentinel support
  (`Sentinel(...).master_for(NAME)`), which asks the sentinels where the
  primary is on every new connection.

redis-py's own retries are off (`Retry(NoBackoff(), 0)`, also for the
sentinel connections: redis-py 8's default retries nest and can block one
command for tens of seconds): the loop above is the only retry policy.

After the run, each key is read once more (GET, retried for up to 15 s in all) from
wherever the client is then sent, and everything is written as JSON to
`--out`: per connection its key, every acknowledged INCR as [sent, answered,
value] (Unix seconds), every failure as [sent, failed, kind, message], and
the final GET. The bench (crates/bench/src/compare.rs) does the
arithmetic.
"""

import argparse
import errno
import json
import sys
import threading
import time
import warnings

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

MAX_MESSAGE = 160

# lib_name=None/lib_version=None (no CLIENT SETINFO on connect: one round trip
# less, the same for every system) is deprecated in redis-py 8 but works.
warnings.filterwarnings("ignore", category=DeprecationWarning)


def no_retry():
    return Retry(NoBackoff(), 0)


def classify(exc):
    """The kind of a failed request."""
    if isinstance(exc, MasterNotFoundError):
        return "no-master"
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return "readonly"
    if isinstance(exc, redis.exceptions.TimeoutError):
        return "timeout"
    if isinstance(exc, redis.exceptions.ResponseError):
        return "error-reply"
    # Walk the chain: redis-py wraps socket errors in its ConnectionError.
    seen = exc
    while seen is not None:
        if isinstance(seen, (ConnectionResetError, BrokenPipeError)):
            return "reset"
        if isinstance(seen, ConnectionRefusedError):
            return "refused"
        if isinstance(seen, TimeoutError):
            return "timeout"
        if isinstance(seen, OSError) and seen.errno in (
            errno.EHOSTUNREACH,
            errno.ENETUNREACH,
        ):
            return "unreachable"
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    for needle, kind in (
        ("Error 104", "reset"),
        ("Connection reset", "reset"),
        ("Error 32 ", "reset"),
        ("Error 111", "refused"),
        ("refused", "refused"),
        ("Error 113", "unreachable"),
        ("No route to host", "unreachable"),
        ("Timeout", "timeout"),
        ("timed out", "timeout"),
        ("Connection closed by server", "closed"),
    ):
        if needle in text:
            return kind
    if isinstance(exc, redis.exceptions.ConnectionError):
        return "connection-other"
    return "other"


class Target:
    def __init__(self, args):
        self.args = args
        common = dict(
            socket_timeout=args.timeout,
            socket_connect_timeout=args.connect_timeout,
            retry=no_retry(),
            lib_name=None,
            lib_version=None,
            # RESP2 (redis-py 8 defaults to RESP3, whose HELLO tandem's kv
            # does not speak): the same protocol for every system.
            protocol=2,
        )
        self.common = common
        if args.mode == "sentinel":
            sentinels = []
            for s in args.sentinels.split(","):
                host, port = s.rsplit(":", 1)
                sentinels.append((host, int(port)))
            self.sentinel = Sentinel(
                sentinels,
                sentinel_kwargs=dict(
                    socket_timeout=args.sentinel_timeout,
                    socket_connect_timeout=args.sentinel_timeout,
                    retry=no_retry(),
                    lib_name=None,
                    lib_version=None,
                    protocol=2,
                ),
            )

    def client(self):
        if self.args.mode == "sentinel":
            return self.sentinel.master_for(self.args.master_name, **self.common)
        return redis.Redis(
            host=self.args.host,
            port=self.args.port,
            single_connection_client=True,
            **self.common,
        )


def close(client):
    try:
        client.close()
    except Exception:  # noqa: BLE001 - a broken client may fail to close
        pass
    try:
        client.connection_pool.disconnect()
    except Exception:  # noqa: BLE001
        pass


def worker(target, key, start, end, period, record):
    ok = record["ok"]
    err = record["err"]
    client = None
    tick = start
    while True:
        now = time.time()
        if tick > now:
            time.sleep(tick - now)
        if tick >= end:
            break
        # A late tick is not made up for: the next one is a period later.
        tick = max(tick + period, time.time())
        sent = time.time()
        try:
            if client is None:
                client = target.client()
            value = client.incr(key)
            answered = time.time()
            if isinstance(value, int):
                ok.append([sent, answered, value])
            else:
                err.append([sent, answered, "wrong-reply", repr(value)[:MAX_MESSAGE]])
        except Exception as exc:  # noqa: BLE001 - every failure is data
            err.append([sent, time.time(), classify(exc), str(exc)[:MAX_MESSAGE]])
            if client is not None:
                close(client)
            client = None
    if client is not None:
        close(client)


def final_read(target, key, record, deadline):
    last = None
    while time.time() < deadline:
        client = None
        try:
            client = target.client()
            value = client.get(key)
            record["final"] = int(value) if value is not None else 0
            record["final_at"] = time.time()
            return
        except Exception as exc:  # noqa: BLE001
            last = f"{classify(exc)}: {str(exc)[:MAX_MESSAGE]}"
            time.sleep(0.1)
        finally:
            if client is not None:
                close(client)
    record["final"] = None
    record["final_error"] = last


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["plain", "sentinel"], required=True)
    p.add_argument("--host", default="198.18.0.100")
    p.add_argument("--port", type=int, default=6379)
    p.add_argument("--sentinels", default="", help="HOST:PORT,HOST:PORT,...")
    p.add_argument("--master-name", default="mymaster")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--duration", type=float, default=15.0)
    p.add_argument("--period-ms", type=float, default=5.0)
    p.add_argument("--timeout", type=float, default=1.0)
    p.add_argument("--connect-timeout", type=float, default=0.5)
    p.add_argument("--sentinel-timeout", type=float, default=0.25)
    p.add_argument("--start-at", type=float, default=0.0, help="Unix time")
    p.add_argument("--key-prefix", default="cmp")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    target = Target(args)
    start = args.start_at if args.start_at > 0 else time.time()
    end = start + args.duration
    period = args.period_ms / 1000.0
    records = [
        {"key": f"{args.key_prefix}:{i}", "ok": [], "err": []}
        for i in range(args.connections)
    ]
    threads = [
        threading.Thread(
            target=worker,
            args=(target, r["key"], start, end, period, r),
            daemon=True,
        )
        for r in records
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Every key gets at least one try; all of them together at most 15 s.
    deadline = time.time() + 15.0
    for r in records:
        final_read(target, r["key"], r, max(deadline, time.time() + 0.01))
    result = {
        "mode": args.mode,
        "redis_py": redis.__version__,
        "python": sys.version.split()[0],
        "start": start,
        "end": end,
        "period_ms": args.period_ms,
        "timeout_s": args.timeout,
        "connect_timeout_s": args.connect_timeout,
        "sentinel_timeout_s": args.sentinel_timeout,
        "connections": records,
    }
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
