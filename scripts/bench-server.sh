#!/usr/bin/env bash
# Runs the server-side figures of docs/benchmarks.md against a fresh server.
#
#   scripts/bench-server.sh sqlite|postgres [matrix|sustained|connections|all]
#
# Starts a release `collab serve` on 127.0.0.1:8100 (SQLite in a temporary
# directory, or a fresh PostgreSQL database `collab_bench` on
# postgres://postgres@127.0.0.1:5432), runs `collab-bench` against it, prints
# each result's JSON line, and stops the server. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${1:?sqlite or postgres}
what=${2:-all}
addr=127.0.0.1:8100
cargo build --release -q -p collab-server -p collab-bench
bench=target/release/collab-bench
tmp=$(mktemp -d)
case "$backend" in
    sqlite) db="sqlite://$tmp/bench.db" ;;
    postgres)
        psql -q -h 127.0.0.1 -U postgres -d postgres -c 'DROP DATABASE IF EXISTS collab_bench WITH (FORCE)' \
            -c 'CREATE DATABASE collab_bench'
        db="postgres://postgres@127.0.0.1:5432/collab_bench" ;;
    *) echo "unknown backend $backend" >&2; exit 2 ;;
esac
ulimit -n "$(ulimit -Hn)"
DATABASE_URL=$db COLLAB_BIND=$addr RUST_LOG=warn COLLAB_MAX_OPS_PER_SECOND=1000000 \
    target/release/collab serve >"$tmp/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do curl -sf "http://$addr/health" >/dev/null && break; sleep 0.1; done
echo "# $backend, server pid $pid, $(nproc) cores, $(date -u +%FT%TZ)"
load() { "$bench" load --url "http://$addr" --server-pid "$pid" --json "$@" | tail -n 1; }

if [[ $what == matrix || $what == all ]]; then
    for clients in 2 10 50 200; do
        load --clients "$clients" --docs 1 --rate 10 --duration 10 --warmup 2
    done
    load --clients 1000 --docs 100 --rate 10 --duration 10 --warmup 3
fi
if [[ $what == sustained || $what == all ]]; then
    # One document, 20 typists, rising rates: where does p99 keystroke->peer pass 50 ms?
    for rate in 25 50 100 200 400 800; do
        load --clients 20 --docs 1 --rate "$rate" --duration 8 --warmup 2
    done
fi
if [[ $what == connections || $what == all ]]; then
    "$bench" connections --url "http://$addr" --server-pid "$pid" --count 10000 --docs 100 --json | tail -n 1
fi
