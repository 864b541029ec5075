#!/usr/bin/env bash
# After-event spool load: 10 000 after callbacks with the upstream stopped (ack latency), then
# kill -9, restart, upstream up, and every event delivered with its delivery id. Prints a table.
# With Redis also the ack latency while Redis is down (the local buffer) next to the normal one.
#   bash bench/spool-load.sh [--events N] [--connections C] [--backend redb|redis|both] [--redis-fsync always|everysec] [--outage-events N]
# --backend redis (or both) starts its own redis-server on a free loopback port (Debian package redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin openim-callback-gateway --example spool_load
exec target/release/examples/spool_load target/release/openim-callback-gateway "$@"
