# Sourced by the install and build scripts: `step WHAT COMMAND...` runs COMMAND with a
# line when it starts and one with its time when it ends (or FAILED and its status,
# which the caller gets back).  A step is never minutes of silence: while it runs, a
# terminal sees its elapsed time counting on one line, a log a line every 30 s.
# PROGRESS_NAME prefixes the lines (default: the script's name); PROGRESS_INTERVAL sets
# the log's seconds between lines.
step() {
    local what="$1" name="${PROGRESS_NAME:-$(basename "$0" .sh)}" started status=0 ticker
    shift
    echo "$name: $what ..." >&2
    started=$(date +%s%N)
    (
        interval=${PROGRESS_INTERVAL:-30}
        [ -t 2 ] && interval=1
        while sleep "$interval"; do
            kill -0 "$$" 2>/dev/null || exit 0  # the script is gone: so are we
            elapsed=$(( ($(date +%s%N) - started) / 1000000000 ))
            if [ -t 2 ]; then
                printf '\r\033[K%s: %s: %d s' "$name" "$what" "$elapsed" >&2
            else
                echo "$name: $what: still working, $elapsed s" >&2
            fi
        done
    ) </dev/null >/dev/null &
    ticker=$!
    "$@" || status=$?
    kill "$ticker" 2>/dev/null || true
    wait "$ticker" 2>/dev/null || true
    [ -t 2 ] && printf '\r\033[K' >&2
    local tenths=$(( ($(date +%s%N) - started) / 100000000 ))
    if [ "$status" -ne 0 ]; then
        echo "$name: $what: FAILED (status $status) after $((tenths / 10)).$((tenths % 10)) s" >&2
        return "$status"
    fi
    echo "$name: $what: done in $((tenths / 10)).$((tenths % 10)) s" >&2
}
