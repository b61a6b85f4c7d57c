#!/bin/sh
# Entry point of the collab image: for `serve` and `worker`, migrate the
# database first (`collab init-db`, idempotent; concurrent runs against one
# PostgreSQL are serialised by sqlx's migration lock), then exec, so collab
# is PID 1 and receives SIGTERM for its graceful shutdown.
#
#   entrypoint.sh                  -> collab init-db; exec collab serve
#   entrypoint.sh worker [FLAGS]   -> collab init-db [FLAGS]; exec collab worker [FLAGS]
#   entrypoint.sh seed | init-db | --help | ...  -> exec collab ...
#
# Configuration flags are global, so FLAGS after `serve`/`worker` (for
# example --database-url) reach init-db too. Arguments that start with a
# flag are passed through unchanged (collab then runs `serve` itself, which
# migrates on start anyway).
#
# Access control: with COLLAB_AUTH_SECRET (or COLLAB_AUTH_PUBLIC_KEY) set, the
# server runs in token mode. Without either it would be open, and an open
# server refuses to listen on 0.0.0.0 (which a container must); rather than
# fail to start, the image then says loudly that it is open and allows it.
# Set COLLAB_ALLOW_ANONYMOUS=false to make it refuse instead.
set -eu

if [ "$#" -eq 0 ]; then
    set -- serve
fi

if [ -z "${COLLAB_AUTH_SECRET:-}" ] && [ -z "${COLLAB_AUTH_PUBLIC_KEY:-}" ] \
    && [ -z "${COLLAB_ALLOW_ANONYMOUS:-}" ] && [ "$1" = serve ]; then
    echo "collab: no COLLAB_AUTH_SECRET or COLLAB_AUTH_PUBLIC_KEY: this server is OPEN." >&2
    echo "collab: anyone who can reach it may read, change and delete every document." >&2
    echo "collab: set COLLAB_AUTH_SECRET (openssl rand -base64 48) for token mode." >&2
    export COLLAB_ALLOW_ANONYMOUS=true
fi

case "$1" in
    serve | worker)
        command=$1
        shift
        /usr/local/bin/collab init-db "$@"
        exec /usr/local/bin/collab "$command" "$@"
        ;;
    *)
        exec /usr/local/bin/collab "$@"
        ;;
esac
