#!/usr/bin/env bash
# Token mode against open mode: the 50 × 10 load (50 clients typing 10
# edits a second into one document) on the same release binary, runs
# alternated so both modes see the same machine noise.
#
#   scripts/bench-auth.sh [runs] [sqlite|postgres]
#
# Open runs start `collab serve` with no key; token runs with
# COLLAB_AUTH_SECRET, and every client (REST and WebSocket) presents a token
# minted by `collab token`. Each run prints one JSON line prefixed with its
# mode. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
backend=${2:-sqlite}
addr=127.0.0.1:8103
cargo build --release -q -p collab-server -p collab-bench
bin=target/release/collab
bench=target/release/collab-bench
secret=$(head -c 48 /dev/urandom | base64 | tr -d '\n')
ulimit -n "$(ulimit -Hn)"
run() {
    local mode=$1 tmp db pid token_args=()
    tmp=$(mktemp -d)
    if [[ $backend == postgres ]]; then
        psql -q -h 127.0.0.1 -U postgres -d postgres -c 'DROP DATABASE IF EXISTS collab_auth WITH (FORCE)' \
            -c 'CREATE DATABASE collab_auth'
        db="postgres://postgres@127.0.0.1:5432/collab_auth"
    else
        db="sqlite://$tmp/auth.db"
    fi
    if [[ $mode == token ]]; then
        export COLLAB_AUTH_SECRET=$secret
        token_args=(--token "$("$bin" token --sub bench --doc '*=admin' --ttl 1h)")
    else
        unset COLLAB_AUTH_SECRET
    fi
    DATABASE_URL=$db COLLAB_BIND=$addr RUST_LOG=warn COLLAB_MAX_OPS_PER_SECOND=1000000 \
        "$bin" serve >"$tmp/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -sf "http://$addr/health" >/dev/null && break; sleep 0.1; done
    printf '%s ' "$mode"
    "$bench" load --url "http://$addr" --server-pid "$pid" --clients 50 --docs 1 --rate 10 \
        --duration 10 --warmup 2 --json "${token_args[@]}" | tail -n 1
    kill "$pid"; wait "$pid" 2>/dev/null || true
    rm -rf "$tmp"
}
echo "# $backend, $(nproc) cores, $(date -u +%FT%TZ)"
for _ in $(seq "$runs"); do
    run open
    run token
done
