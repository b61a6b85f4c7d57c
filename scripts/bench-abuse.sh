#!/usr/bin/env bash
# Runs the "Limits and abuse" figures of docs/benchmarks.md against a fresh server.
#
#   scripts/bench-abuse.sh sqlite|postgres [seconds per attack, default 5]
#
# Starts a release `collab serve` on 127.0.0.1:8101 (SQLite in a temporary
# directory, or a fresh PostgreSQL database `collab_abuse` on
# postgres://postgres@127.0.0.1:5432) with the default limits, except
# COLLAB_MAX_DOCUMENT_CHARS=10000000 (spelled out: the slow-reader attack
# needs room), runs `collab-bench abuse` against it (a baseline, then each
# attack, with a victim typing at 10 edits/s), prints every line, and stops
# the server. Loopback only; takes about two minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${1:?sqlite or postgres}
seconds=${2:-5}
addr=127.0.0.1:8101
cargo build --release -q -p collab-server -p collab-bench
bench=target/release/collab-bench
tmp=$(mktemp -d)
case "$backend" in
    sqlite) db="sqlite://$tmp/abuse.db" ;;
    postgres)
        psql -q -h 127.0.0.1 -U postgres -d postgres -c 'DROP DATABASE IF EXISTS collab_abuse WITH (FORCE)' \
            -c 'CREATE DATABASE collab_abuse'
        db="postgres://postgres@127.0.0.1:5432/collab_abuse" ;;
    *) echo "unknown backend $backend" >&2; exit 2 ;;
esac
# The half-open attack holds 2,000 connections: the server needs the descriptors.
ulimit -n "$(ulimit -Hn)"
DATABASE_URL=$db COLLAB_BIND=$addr RUST_LOG=warn COLLAB_MAX_DOCUMENT_CHARS=10000000 \
    target/release/collab serve >"$tmp/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do curl -sf "http://$addr/health" >/dev/null && break; sleep 0.1; done
echo "# $backend, server pid $pid, $(nproc) cores, $(date -u +%FT%TZ), $(git rev-parse --short HEAD)"
"$bench" abuse --url "http://$addr" --server-pid "$pid" --seconds "$seconds" --json
if ! kill -0 "$pid" 2>/dev/null; then
    echo "# the server died during the run" >&2
fi
# The server's warnings and errors, one line per distinct message (session
# ids folded): count, first and last time, message.
echo "# server log: $(wc -l <"$tmp/server.log") lines"
sed -E 's/\x1b\[[0-9;]*m//g; s/ session=[0-9]+//g; s/ client=[A-Za-z0-9_-]+//g' "$tmp/server.log" |
    awk '{ t = $1; $1 = ""; n[$0]++; if (!($0 in f)) f[$0] = t; l[$0] = t }
         END { for (m in n) printf "#   %6d  %s .. %s %s\n", n[m], substr(f[m], 12, 12), substr(l[m], 12, 12), m }' |
    sort -k3
