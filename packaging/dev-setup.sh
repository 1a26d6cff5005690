#!/usr/bin/env bash
# perf-mcp development and CI machine set-up. Run as root. Idempotent: every step
# checks first and only changes what is missing, so running it twice is safe and
# the second run is quick.
#
#   packaging/dev-setup.sh              full set-up (root)
#   packaging/dev-setup.sh --venv-only  only the virtualenv at .venv (any user)
#
# What it does (see /work/shared/TESTING.md and README.md, "Development"):
#   1. apt packages (apt-get update only when something is missing)
#   2. tracefs at /sys/kernel/tracing
#   3. group perf-mcp, users perfmcp-granted (in the group) and perfmcp-denied (not)
#   4. a system D-Bus
#   5. the polkit action file and the example rules file (test set-up only; a
#      production install is `perf-mcp-broker install` / the Debian package)
#   6. a check that polkit answers yes for perfmcp-granted and no for perfmcp-denied
#   7. the virtualenv .venv from /usr/bin/python3 with the project installed editable
#   8. a check that the test users can read the tree and run the venv's python
set -euo pipefail
umask 022

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
STAMP="$VENV/.perf-mcp-installed"

GROUP=perf-mcp
GRANTED=perfmcp-granted
DENIED=perfmcp-denied
POLICY_SRC="$REPO/polkit/org.perfmcp.policy"
RULES_SRC="$REPO/polkit/50-perf-mcp.rules"
POLICY_DST=/usr/share/polkit-1/actions/org.perfmcp.policy
RULES_DST=/etc/polkit-1/rules.d/50-perf-mcp.rules
DBUS_SOCKET=/run/dbus/system_bus_socket

PACKAGES=(
    libcap-dev linux-perf bpftrace libbpf-tools sysstat stress-ng fio iperf3
    nftables dbus polkitd pkexec iproute2 util-linux procps
    python3-venv python3-dev build-essential libxml2-utils git
    systemd systemd-container bpftool
)

log() { printf 'dev-setup: %s\n' "$*" >&2; }
die() { printf 'dev-setup: ERROR: %s\n' "$*" >&2; exit 1; }
loud() {
    printf '\n' >&2
    printf 'dev-setup: ***************************************************************\n' >&2
    printf 'dev-setup: *** %s\n' "$@" >&2
    printf 'dev-setup: ***************************************************************\n\n' >&2
}

# ---------------------------------------------------------------- 1. packages
package_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" = installed ]
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        package_installed "$p" || missing+=("$p")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        log "apt packages: all ${#PACKAGES[@]} present"
        return
    fi
    log "apt packages missing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# ---------------------------------------------------------------- 2. tracefs
mount_tracefs() {
    if [ -d /sys/kernel/tracing/events ]; then
        log "tracefs: mounted"
        return
    fi
    log "tracefs: mounting at /sys/kernel/tracing"
    mount -t tracefs tracefs /sys/kernel/tracing
    [ -d /sys/kernel/tracing/events ] || die "tracefs mounted but /sys/kernel/tracing/events is missing"
}

# ---------------------------------------------------------------- 3. users
ensure_user() {
    # System user with a group of the same name, no home, no login shell.
    local user="$1"
    if id -u "$user" >/dev/null 2>&1; then
        return
    fi
    log "creating user $user"
    useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin "$user"
}

in_group() { id -nG "$1" | tr ' ' '\n' | grep -qx "$2"; }

ensure_users() {
    getent group "$GROUP" >/dev/null || { log "creating group $GROUP"; groupadd --system "$GROUP"; }
    ensure_user "$GRANTED"
    ensure_user "$DENIED"
    # The broker runs perf script as this user (perf_mcp_broker.jobs.PARSER_USER).
    ensure_user perf-mcp-parse
    in_group "$GRANTED" "$GROUP" || { log "adding $GRANTED to $GROUP"; usermod -aG "$GROUP" "$GRANTED"; }
    if in_group "$DENIED" "$GROUP"; then
        log "removing $DENIED from $GROUP"
        gpasswd -d "$DENIED" "$GROUP" >/dev/null
    fi
    log "users: $GRANTED ($(id -nG "$GRANTED")), $DENIED ($(id -nG "$DENIED"))"
}

# ---------------------------------------------------------------- 4. D-Bus
system_bus_answers() {
    [ -S "$DBUS_SOCKET" ] || return 1
    timeout 10 dbus-send --system --reply-timeout=5000 --dest=org.freedesktop.DBus \
        --print-reply / org.freedesktop.DBus.ListNames >/dev/null 2>&1
}

ensure_system_bus() {
    if system_bus_answers; then
        log "system D-Bus: answering"
        return
    fi
    log "system D-Bus: starting dbus-daemon --system"
    mkdir -p /run/dbus
    rm -f /run/dbus/pid
    dbus-daemon --system --fork
    local i
    for i in $(seq 50); do
        system_bus_answers && { log "system D-Bus: answering"; return; }
        sleep 0.1
    done
    die "the system D-Bus does not answer on $DBUS_SOCKET"
}

# ---------------------------------------------------------------- 5. polkit files
install_if_changed() {
    local src="$1" dst="$2"
    [ -f "$src" ] || die "missing $src"
    if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
        return
    fi
    log "installing $dst"
    install -D -o root -g root -m 0644 "$src" "$dst"
}

install_polkit_files() {
    install_if_changed "$POLICY_SRC" "$POLICY_DST"
    install_if_changed "$RULES_SRC" "$RULES_DST"
    log "polkit: $POLICY_DST, $RULES_DST"
}

# ---------------------------------------------------------------- 6. polkit check
# pkcheck exit status (polkit 122, seen here): 0 authorised, 1 not authorised,
# 2 challenge (an agent could authenticate), 3 dismissed, 127 error (unknown
# action, dead pid, no bus). Only 0 counts as yes.
pkcheck_as() {
    local user="$1" pid start uid rc=0 i
    setpriv --reuid="$user" --regid="$user" --init-groups -- sleep 30 &
    pid=$!
    uid="$(id -u "$user")"
    # Wait until the child has become the user (setpriv execs sleep in place).
    for i in $(seq 100); do
        [ "$(awk '/^Uid:/ {print $2}' "/proc/$pid/status" 2>/dev/null)" = "$uid" ] && break
        sleep 0.05
    done
    start="$(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $20}')"
    timeout 30 pkcheck --action-id org.perfmcp.profile --process "$pid,$start,$uid" >/dev/null 2>&1 || rc=$?
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    return "$rc"
}

verify_polkit() {
    local rc_granted=0 rc_denied=0 i
    # polkitd starts by D-Bus activation on the first check and reads the new
    # rules file asynchronously: give it a few tries before calling it broken.
    for i in $(seq 20); do
        rc_granted=0
        pkcheck_as "$GRANTED" || rc_granted=$?
        [ "$rc_granted" -eq 0 ] && break
        sleep 0.5
    done
    pkcheck_as "$DENIED" || rc_denied=$?
    if [ "$rc_granted" -ne 0 ]; then
        die "polkit refused org.perfmcp.profile for $GRANTED (pkcheck exit $rc_granted); is polkitd installed and the rules file readable?"
    fi
    if [ "$rc_denied" -eq 0 ]; then
        die "polkit granted org.perfmcp.profile to $DENIED: some other rule grants it"
    fi
    log "polkit: org.perfmcp.profile yes for $GRANTED, no for $DENIED (pkcheck exit $rc_denied)"
}

# ---------------------------------------------------------------- 7. venv
venv_fingerprint() {
    sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1
}

ensure_venv() {
    if [ -x "$VENV/bin/python" ] && ! grep -qx 'home = /usr/bin' "$VENV/pyvenv.cfg" 2>/dev/null; then
        loud "$VENV was not made from /usr/bin/python3 (see $VENV/pyvenv.cfg);" \
             "non-root test users may not be able to run it. Remove it and run again."
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        log "venv: creating $VENV from /usr/bin/python3"
        /usr/bin/python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q --disable-pip-version-check wheel
    fi
    local want have=""
    want="$(venv_fingerprint)"
    [ -f "$STAMP" ] && have="$(cat "$STAMP")"
    if [ "$want" = "$have" ] && [ -x "$VENV/bin/perf-mcp" ]; then
        log "venv: up to date"
    else
        log "venv: installing perf-mcp[test] (editable)"
        "$VENV/bin/pip" install -q --disable-pip-version-check wheel
        "$VENV/bin/pip" install -q --disable-pip-version-check -e "$REPO[test]"
        printf '%s\n' "$want" >"$STAMP"
    fi
    # The broker's launcher is not pip's console script: that wrapper runs a normal
    # interpreter, which processes the venv's .pth files before any of our code. This
    # one (a copy of broker/perf_mcp_broker/boot.py) starts `python -IS` and checks
    # before it imports anything. Rewritten only when it differs.
    /usr/bin/python3 -I -S "$REPO/packaging/install.py" venv-launcher "$VENV"
    log "venv: $VENV/bin/perf-mcp-broker is the isolated launcher"
}

# ---------------------------------------------------------------- 8. readability
check_tree_readable() {
    if ! setpriv --reuid="$GRANTED" --regid="$GRANTED" --init-groups -- test -r "$REPO/pyproject.toml"; then
        loud "The tree $REPO is NOT readable by $GRANTED." \
             "Tests that run the frontend as a non-root user will fail here." \
             "Use 'bash .ci/run' (it copies the tree to /var/tmp/perf-mcp-ci/src)" \
             "or make the path readable (chmod o+rx on every directory above it)."
        return
    fi
    if ! setpriv --reuid="$DENIED" --regid="$DENIED" --init-groups -- \
            "$VENV/bin/python" -c 'import perf_mcp_protocol' >/dev/null 2>&1; then
        loud "$VENV/bin/python cannot import perf_mcp_protocol as $DENIED." \
             "Check the modes under $VENV and $REPO."
        return
    fi
    log "tree: readable by the test users, venv python runs as $DENIED"
}

# The MCP Inspector CLI is the one client in the suite that perf-mcp did not write
# (tests/frontend/test_inspector_cli.py). Node.js comes from Debian where the machine
# has none; the pinned Inspector goes into npm's cache so the test does not fetch it.
INSPECTOR=@modelcontextprotocol/inspector@2.12.0
ensure_inspector() {
    if ! command -v npx >/dev/null 2>&1; then
        log "node: npx missing; installing Debian's nodejs and npm"
        apt-get update -q
        apt-get install -y -q --no-install-recommends nodejs npm
    fi
    if npm cache ls "$INSPECTOR" 2>/dev/null | grep -q inspector; then
        log "node: $INSPECTOR is in npm's cache"
    elif npm cache add "$INSPECTOR" >/dev/null 2>&1; then
        log "node: $INSPECTOR added to npm's cache"
    else
        loud "could not fetch $INSPECTOR into npm's cache: the Inspector test will fail"
    fi
}

main() {
    if [ "${1:-}" = "--venv-only" ]; then
        ensure_venv
        return
    fi
    [ "$(id -u)" -eq 0 ] || die "run as root (sudo $0), or '$0 --venv-only' for the virtualenv alone"
    install_packages
    ensure_inspector
    mount_tracefs
    ensure_users
    ensure_system_bus
    install_polkit_files
    verify_polkit
    ensure_venv
    check_tree_readable
    log "done"
}

main "$@"
