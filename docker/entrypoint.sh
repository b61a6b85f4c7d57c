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
set -eu

if [ "$#" -eq 0 ]; then
    set -- serve
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
