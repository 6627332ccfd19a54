"""redis-py against the replicated kv service (crates/cli/tests/redis_clients.rs).

Usage: redis_clients.py HOST PORT GO_FILE PROTOCOL

PROTOCOL is "default" (redis-py's own default: RESP3, HELLO 3 on connect)
or "2" (protocol=2). Phase A runs everything once and prints READY; then
the script waits for GO_FILE to exist (the test kills the primary in
between) and runs phase B on the very same client objects and
connections, checking that what phase A left is still there, and prints
DONE. Any failed check or exception exits non-zero with a traceback.
"""

import os
import sys
import time

import redis

host, port, go_file, protocol = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
extra = {} if protocol == "default" else {"protocol": int(protocol)}
tag = f"p{protocol}-{os.getpid()}"


def client(**kw):
    args = dict(host=host, port=port, decode_responses=True, socket_timeout=30)
    args.update(extra)
    args.update(kw)
    return redis.Redis(**args)


def check(what, got, want):
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")
    print(f"ok {what}", flush=True)


def k(name):
    return f"{tag}:{name}"


r = client()
other = client()
named = client(single_connection_client=True)
db1 = client(db=1, single_connection_client=True)
sub = client()
pubsub = sub.pubsub()


def next_message(p, deadline=10.0):
    """The next data message of a pubsub (skipping confirmations)."""
    end = time.time() + deadline
    while time.time() < end:
        m = p.get_message(timeout=1.0)
        if m is not None and m["type"] in ("message", "pmessage"):
            return m
    raise AssertionError("no message arrived")


def common_round(phase):
    """What both phases do: every feature once, on the same clients."""
    check(f"{phase} ping", r.ping(), True)
    check(f"{phase} set", r.set(k(f"greeting-{phase}"), "hello"), True)
    check(f"{phase} get", r.get(k(f"greeting-{phase}")), "hello")

    # A pipeline (no transaction).
    p = r.pipeline(transaction=False)
    p.set(k("pipe"), phase).incr(k("pipe-n")).get(k("pipe")).rpush(k("list"), "a", "b")
    got = p.execute()
    check(f"{phase} pipeline", [got[0], got[2]], [True, phase])

    # MULTI/EXEC through a transactional pipeline.
    p = r.pipeline(transaction=True)
    p.set(k("tx"), "1").incr(k("tx")).hset(k("h"), mapping={"f": "v", "g": "w"}).hgetall(k("h"))
    check(f"{phase} transaction", p.execute(), [True, 2, 0 if phase == "b" else 2, {"f": "v", "g": "w"}])

    # WATCH: a change by another client between WATCH and EXEC aborts.
    with r.pipeline() as p:
        p.watch(k("watched"))
        other.set(k("watched"), "theirs")
        p.multi()
        p.set(k("watched"), "mine")
        try:
            p.execute()
            raise AssertionError("EXEC ran although a watched key changed")
        except redis.WatchError:
            print(f"ok {phase} watch conflict", flush=True)
    check(f"{phase} watched value", r.get(k("watched")), "theirs")
    # And without a conflict it commits.
    with r.pipeline() as p:
        p.watch(k("watched"))
        p.multi()
        p.set(k("watched"), "mine")
        check(f"{phase} watch without conflict", p.execute(), [True])

    # SCAN and KEYS.
    want = {k(f"scan:{i}") for i in range(60)}
    found = set(r.scan_iter(match=k("scan:*"), count=7))
    check(f"{phase} scan_iter", found, want)
    check(f"{phase} keys", sorted(r.keys(k("scan:1*"))), sorted(x for x in want if x.startswith(k("scan:1"))))
    check(f"{phase} type", r.type(k("h")), "hash")

    # INCRBYFLOAT and SETEX.
    check(f"{phase} incrbyfloat", r.incrbyfloat(k("float"), 1.25), 1.25 if phase == "a" else 2.5)
    check(f"{phase} setex", r.setex(k("tmp"), 100, "v"), True)
    ttl = r.ttl(k("tmp"))
    check(f"{phase} ttl after setex", 98 <= ttl <= 100, True)

    # Blocking pops: served at once, and a timeout on the log's clock.
    r.rpush(k("queue"), "job-" + phase)
    check(f"{phase} blpop", list(r.blpop([k("queue")], timeout=1)), [k("queue"), "job-" + phase])
    check(f"{phase} blpop timeout", r.blpop([k("empty")], timeout=0.2), None)

    # SELECT 1 (on connect) keeps its own keyspace.
    check(f"{phase} db1 get", db1.get(k("only-in-db1")), "db1")
    check(f"{phase} db0 get", r.get(k("only-in-db1")), None)

    # The connection's name.
    check(f"{phase} client_getname", named.client_getname(), "rcl-" + tag)

    # Pub/sub: a message published now reaches the subscriber.
    check(f"{phase} publish", r.publish(k("news"), f"news-{phase}"), 1)
    m = next_message(pubsub)
    check(f"{phase} message", (m["channel"], m["data"]), (k("news"), f"news-{phase}"))


# ---- phase A
for i in range(60):
    r.set(k(f"scan:{i}"), i)
check("a db1 select+set", db1.set(k("only-in-db1"), "db1"), True)
check("a client_setname", named.client_setname("rcl-" + tag), True)
check("a client_id", isinstance(named.client_id(), int), True)
info = named.client_info()
check("a client_info name", info["name"], "rcl-" + tag)
# redis-py's default is RESP3 (HELLO 3 on connect).
check("a protocol", info["resp"], "3" if protocol == "default" else protocol)
check("a lib-name", info["lib-name"], "redis-py")
pubsub.subscribe(k("news"))
m = pubsub.get_message(timeout=5.0)
check("a subscribed", (m["type"], m["channel"]), ("subscribe", k("news")))
common_round("a")

# AUTH with requirepass, set through the log (CONFIG SET): a new client
# without the password is refused, one with it works, then it is cleared.
if protocol == "default":
    check("a config set requirepass", r.config_set("requirepass", "sekret-rcl"), True)
    try:
        client().ping()
        raise AssertionError("a client without the password was served")
    except (redis.AuthenticationError, redis.ResponseError) as e:
        print(f"ok a noauth ({e})", flush=True)
    authed = client(password="sekret-rcl")
    check("a auth ping", authed.ping(), True)
    check("a auth whoami", authed.acl_whoami(), "default")
    try:
        client(password="wrong").ping()
        raise AssertionError("a wrong password was accepted")
    except (redis.AuthenticationError, redis.ResponseError) as e:
        print(f"ok a wrongpass ({e})", flush=True)
    check("a config clear requirepass", authed.config_set("requirepass", ""), True)
    check("a no password needed again", client().ping(), True)

print("READY", flush=True)

# ---- the failover happens here
end = time.time() + 120
while not os.path.exists(go_file):
    if time.time() > end:
        raise AssertionError("never told to go on")
    time.sleep(0.05)

# ---- phase B: the same clients, the same connections
check("b greeting from a", r.get(k("greeting-a")), "hello")
check("b still subscribed", pubsub.subscribed, True)
common_round("b")
print("DONE", flush=True)
