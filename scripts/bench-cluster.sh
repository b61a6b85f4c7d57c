#!/usr/bin/env bash
# Three `collab serve` instances on one PostgreSQL database and Redis, one
# document, clients spread over the instances: the figures of
# docs/benchmarks.md's "Several instances" section.
#
#   scripts/bench-cluster.sh [extra collab-bench load arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p collab-server -p collab-bench
psql -q -h 127.0.0.1 -U postgres -d postgres -c 'DROP DATABASE IF EXISTS collab_cluster WITH (FORCE)' \
    -c 'CREATE DATABASE collab_cluster' 2>/dev/null
tmp=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
ulimit -n "$(ulimit -Hn)"
urls=()
for port in 8301 8302 8303; do
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/collab_cluster REDIS_URL=redis://127.0.0.1:6379 \
    COLLAB_REDIS_PREFIX="bench-$$" COLLAB_INSTANCE_ID="i$port" COLLAB_BIND="127.0.0.1:$port" \
    COLLAB_MAX_OPS_PER_SECOND=1000000 RUST_LOG=warn \
        target/release/collab serve >"$tmp/$port.log" 2>&1 &
    pids+=($!)
    urls+=(--url "http://127.0.0.1:$port")
done
for port in 8301 8302 8303; do
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
done
echo "# 3 instances (PostgreSQL + Redis), $(nproc) cores, $(date -u +%FT%TZ)"
for args in "--clients 10 --rate 10" "--clients 50 --rate 10" "--clients 20 --rate 100" "--clients 20 --rate 200" "--clients 20 --rate 400"; do
    # shellcheck disable=SC2086
    target/release/collab-bench load "${urls[@]}" --docs 1 $args --duration 8 --warmup 2 --json "$@" | tail -n 1
done
