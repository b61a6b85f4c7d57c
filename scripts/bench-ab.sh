#!/usr/bin/env bash
# A/B of the 50 × 10 load on one document: two `collab` binaries, runs
# alternated so that both see the same machine noise.
#
#   scripts/bench-ab.sh OLD_COLLAB_BIN NEW_COLLAB_BIN [runs] [sqlite|postgres]
#
# Each run starts the binary on 127.0.0.1:8102 with a fresh database (SQLite in
# a temporary directory, or a fresh PostgreSQL database `collab_ab`), drives
# it with `collab-bench load --clients 50 --docs 1 --rate 10 --duration 10`,
# prints the JSON line prefixed with the binary's label, and stops it.
# Build a baseline binary with e.g.
#   git worktree add /tmp/base <rev> && (cd /tmp/base && cargo build --release -p collab-server)
set -euo pipefail
cd "$(dirname "$0")/.."
old=${1:?old collab binary}
new=${2:?new collab binary}
runs=${3:-3}
backend=${4:-sqlite}
addr=127.0.0.1:8102
cargo build --release -q -p collab-bench
bench=target/release/collab-bench
ulimit -n "$(ulimit -Hn)"
run() {
    local label=$1 bin=$2 tmp db pid
    tmp=$(mktemp -d)
    if [[ $backend == postgres ]]; then
        psql -q -h 127.0.0.1 -U postgres -d postgres -c 'DROP DATABASE IF EXISTS collab_ab WITH (FORCE)' \
            -c 'CREATE DATABASE collab_ab'
        db="postgres://postgres@127.0.0.1:5432/collab_ab"
    else
        db="sqlite://$tmp/ab.db"
    fi
    DATABASE_URL=$db COLLAB_BIND=$addr RUST_LOG=warn COLLAB_MAX_OPS_PER_SECOND=1000000 \
        "$bin" serve >"$tmp/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -sf "http://$addr/health" >/dev/null && break; sleep 0.1; done
    printf '%s ' "$label"
    "$bench" load --url "http://$addr" --server-pid "$pid" --clients 50 --docs 1 --rate 10 \
        --duration 10 --warmup 2 --json | tail -n 1
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$tmp"
}
echo "# $backend, $(nproc) cores, $(date -u +%FT%TZ)"
for i in $(seq "$runs"); do
    run old "$old"
    run new "$new"
done
