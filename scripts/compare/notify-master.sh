#!/bin/sh
# keepalived notify_master of `tandem bench compare`: this node now holds the
# VIP, so its redis-server stops replicating and accepts writes.
exec redis-cli -h {{ADDR}} -p {{PORT}} REPLICAOF NO ONE
