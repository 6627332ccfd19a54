#!/usr/bin/env bash
# A failover on Debian 12's own kernel, run inside the VM of
# scripts/vm/debian-kernel-run.sh (issue 18, first step):
#
#   scripts/vm/debian-kernel-run.sh -- scripts/vm/smoke.sh [TANDEM_BINARY]
#
# A 3-node kv lab (namespaces inside the VM), one connection that writes a
# value, a kill of the primary, and the same connection reading it back
# from the new primary. Raft timings are relaxed tenfold: under TCG the VM
# runs ~10-50x slower than the host, and the default 100-200 ms election
# timeout would see failures that are only slowness. Prints which capture
# backend the daemons chose (on 6.1 nftables has `queue`, so: nftables).
set -euo pipefail
cd "$(dirname "$0")/../.."
tandem=${1:-target/debug/tandem}
lab=vmsmoke
"$tandem" lab down --name "$lab" >/dev/null 2>&1 || true
trap '"$tandem" lab down --name "$lab" >/dev/null 2>&1 || true' EXIT
echo "== smoke: kernel $(uname -r)"
TANDEM_LAB_PRIMARY_WAIT_S=${TANDEM_LAB_PRIMARY_WAIT_S:-300} "$tandem" lab up --name "$lab" --service kv --tick-ms 100 --heartbeat-ticks 3 --election-ticks 30
# Which capture backend the daemons installed: an nftables `queue` rule, or
# iptables' NFQUEUE target (both listed as the kernel has them).
echo "== smoke: node 1's capture rules:"
"$tandem" lab exec --name "$lab" --node 1 -- nft list ruleset | grep -i "queue" || echo "   (no nftables queue rule)"
"$tandem" lab exec --name "$lab" --node 1 -- iptables -S -w | grep -i "NFQUEUE" || echo "   (no iptables NFQUEUE rule)"
primary=$("$tandem" lab status --name "$lab" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"])')
echo "== smoke: primary is node $primary"
# One connection across the failover: SET, kill, GET on the same socket.
"$tandem" lab exec --name "$lab" -- python3 - "$tandem" "$lab" "$primary" <<'PY'
import socket, subprocess, sys, time
tandem, lab, primary = sys.argv[1:4]
s = socket.create_connection(("198.18.0.100", 6379), timeout=300)
def cmd(*args):
    s.sendall(("*%d\r\n" % len(args) + "".join("$%d\r\n%s\r\n" % (len(a), a) for a in args)).encode())
    return s.recv(4096)
assert cmd("SET", "smoke", "before-the-kill") == b"+OK\r\n"
print("== smoke: SET ok; killing node", primary, flush=True)
subprocess.run([tandem, "lab", "kill", "--name", lab, primary], check=True)
t = time.time()
got = cmd("GET", "smoke")
print("== smoke: GET after the kill on the same connection: %r (%.1f s)" % (got, time.time() - t), flush=True)
assert got == b"$15\r\nbefore-the-kill\r\n", got
PY
echo "== smoke: passed"
