#!/usr/bin/env bash
# `make demo`. As root: the machine set-up, then a broker on a private socket, then
# packaging/demo.py which runs the frontend as perfmcp-granted under a real MCP
# client; the broker is stopped by its PID and the temp dir removed on every exit.
# As a user: the unprivileged part (packaging/demo.py --unprivileged).
set -euo pipefail
umask 022

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$REPO/.venv/bin/python"
BROKER="$REPO/.venv/bin/perf-mcp-broker"
DEMO="$REPO/packaging/demo.py"
DEMO_USER="${PERF_MCP_DEMO_USER:-perfmcp-granted}"

log() { printf 'demo: %s\n' "$*" >&2; }
die() { printf 'demo: ERROR: %s\n' "$*" >&2; exit 1; }

unprivileged() {
    if [ ! -x "$PY" ]; then
        log "no virtualenv yet: creating $REPO/.venv"
        bash "$REPO/packaging/dev-setup.sh" --venv-only ||
            die "could not create the virtualenv; as root, 'make demo' sets up everything"
    fi
    [ -f "$DEMO" ] || die "$DEMO does not exist yet"
    exec "$PY" "$DEMO" --unprivileged
}

TMP=""
BROKER_PID=""

stop_broker() {
    local i
    [ -n "$BROKER_PID" ] || return 0
    kill -TERM "$BROKER_PID" 2>/dev/null || { BROKER_PID=""; return 0; }
    for i in $(seq 50); do
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$BROKER_PID" 2>/dev/null; then
        log "broker $BROKER_PID did not stop on SIGTERM: SIGKILL"
        kill -KILL "$BROKER_PID" 2>/dev/null || true
    fi
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_broker
    if [ -n "$TMP" ] && [ -d "$TMP" ]; then
        if [ "$rc" -ne 0 ] && [ -s "$TMP/broker.log" ]; then
            log "broker log (last 40 lines):"
            tail -n 40 "$TMP/broker.log" >&2
        fi
        rm -rf -- "$TMP"
    fi
    exit "$rc"
}

wait_for_socket() {
    local sock="$1" i
    for i in $(seq 100); do
        [ -S "$sock" ] && return 0
        kill -0 "$BROKER_PID" 2>/dev/null || die "the broker exited before creating $sock"
        sleep 0.1
    done
    die "the broker did not create $sock within 10 s"
}

privileged() {
    bash "$REPO/packaging/dev-setup.sh"
    [ -f "$DEMO" ] || die "$DEMO does not exist yet"
    [ -x "$BROKER" ] || die "$BROKER is missing (run make setup)"

    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    TMP="$(mktemp -d /tmp/perf-mcp-demo.XXXXXXXX)"
    # The frontend runs as $DEMO_USER and must reach the socket inside.
    chmod 0755 "$TMP"
    local sock="$TMP/broker.sock"

    "$BROKER" --socket "$sock" 2>"$TMP/broker.log" &
    BROKER_PID=$!
    log "broker started (pid $BROKER_PID, socket $sock)"
    wait_for_socket "$sock"

    "$PY" "$DEMO" --broker-socket "$sock" --user "$DEMO_USER"
}

if [ "$(id -u)" -eq 0 ]; then
    privileged
else
    unprivileged
fi
