#!/usr/bin/env bash
# Make sure the Redis in REDIS_URL answers before `make run` starts the gateway.
#
#   REDIS_URL=redis://127.0.0.1:6379/0 scripts/ensure-redis.sh [DATA_DIR]
#
# Local URL (localhost, 127.0.0.1, ::1) with nothing answering: install redis-server if needed (as root),
# then start a daemonized one keeping its data, pidfile and log in DATA_DIR (default ./data).
# Remote URL: only check that it answers. Safe to run any number of times.
set -euo pipefail

REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
# What messages show of it: without its password.
shown_url="$(printf '%s' "$REDIS_URL" | sed -E 's#(://[^:/@]*:)[^@]*@#\1***@#')"
DATA_DIR="${1:-./data}"
say() { printf 'ensure-redis: %s\n' "$*"; }
die() { printf 'ensure-redis: %s\n' "$*" >&2; exit 1; }

# --- parse redis[s]://[user[:password]@]host[:port][/db] ---------------------------------------------------
case "$REDIS_URL" in
    redis://* | rediss://*) ;;
    unix://*) say "REDIS_URL is a unix socket ($shown_url); not managed by this script"; exit 0 ;;
    *) die "REDIS_URL must start with redis:// or rediss:// (got '$shown_url')" ;;
esac
rest="${REDIS_URL#*://}"
rest="${rest%%/*}"
rest="${rest%%\?*}"
hostport="${rest##*@}" # the password may itself contain '@'; the host part never does
if [[ "$hostport" == \[* ]]; then
    host="${hostport#\[}"
    host="${host%%\]*}"
    port="${hostport#*\]}"
    port="${port#:}"
else
    host="${hostport%%:*}"
    port=""
    [[ "$hostport" == *:* ]] && port="${hostport##*:}"
fi
host="${host:-127.0.0.1}"
port="${port:-6379}"
[[ "$port" =~ ^[0-9]+$ ]] || die "cannot read a port from REDIS_URL '$shown_url'"

# --- does something answer? ---------------------------------------------------------------------------------
with_timeout() {
    # A firewalled remote host would otherwise hang `make run` for the kernel's connect timeout.
    if command -v timeout >/dev/null 2>&1; then timeout 5 "$@"; else "$@"; fi
}

# "Answers" means a Redis replies to PING: PONG, or NOAUTH when it wants a password. Credentials are the
# app's business, and `redis-cli -u` is avoided on purpose: it cannot parse [::1] and sends AUTH with an empty
# username for redis://:password@host, which fails where the app's client succeeds.
answers() {
    local out
    if command -v redis-cli >/dev/null 2>&1; then
        out="$(with_timeout redis-cli -h "$host" -p "$port" ping 2>/dev/null)" || return 1
    else
        out="$(with_timeout bash -c '
            exec 3<>"/dev/tcp/$1/$2" || exit 1
            printf "PING\r\n" >&3
            IFS= read -r -t 3 line <&3 || exit 1
            printf "%s" "$line"
        ' _ "$host" "$port" 2>/dev/null)" || return 1
    fi
    case "$out" in
        *PONG*) return 0 ;;
        *NOAUTH*) auth_note=" (it requires a password; the app takes it from REDIS_URL)"; return 0 ;;
        *) return 1 ;;
    esac
}

port_open() {
    with_timeout bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null
}

case "$host" in
    localhost | 127.0.0.1 | ::1) local_host=1 ;;
    *) local_host=0 ;;
esac
auth_note=""

if [[ "$REDIS_URL" == rediss://* ]]; then
    # A plain-text PING cannot talk to a TLS port; reachability is all that can be checked from here.
    port_open || die "Redis at $host:$port (TLS, from REDIS_URL) is not reachable; this script only starts" \
        "plain-text local servers, so use redis:// for a local Redis"
    say "TLS Redis port $host:$port is reachable; nothing to do"
    exit 0
fi

if answers; then
    say "Redis at $host:$port already answers$auth_note; nothing to do"
    exit 0
fi

if [[ "$local_host" == 0 ]]; then
    die "Redis at $host:$port (from REDIS_URL) does not answer PING. Check that it is running and that" \
        "this machine can reach it (firewall, security group), or unset REDIS_URL" \
        "to use a local redis-server."
fi

if port_open; then
    die "something listens on $host:$port but does not answer Redis PING (not a Redis?);" \
        "not starting another server there"
fi

# --- install if missing ---------------------------------------------------------------------------------------
find_server() {
    command -v redis-server 2>/dev/null || { [[ -x /usr/bin/redis-server ]] && echo /usr/bin/redis-server; } || true
}

installed=""
server="$(find_server)"
if [[ -z "$server" ]]; then
    if [[ "$(id -u)" != 0 ]]; then
        die "redis-server is not installed. Install it with: sudo apt-get install redis-server" \
            "(or point REDIS_URL at an existing Redis)"
    fi
    command -v apt-get >/dev/null 2>&1 || die "redis-server is not installed and apt-get is not available; install Redis with your package manager"
    apt_log="$(mktemp)"
    if ! { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server; } </dev/null >"$apt_log" 2>&1; then
        tail -n 30 "$apt_log" >&2
        rm -f "$apt_log"
        die "apt-get install redis-server failed (output above)"
    fi
    rm -f "$apt_log"
    server="$(find_server)"
    [[ -n "$server" ]] || die "redis-server still not found after apt-get install"
    installed="installed redis-server, "
    # Debian's package may start its own service on 6379; if that is the one we need, we are done.
    if answers; then
        say "${installed}the packaged service now answers at $host:$port$auth_note"
        exit 0
    fi
fi

# --- start ------------------------------------------------------------------------------------------------------
mkdir -p "$DATA_DIR"
data_dir="$(cd "$DATA_DIR" && pwd)"
pidfile="$data_dir/redis.pid"
logfile="$data_dir/redis.log"
bind_addr=127.0.0.1
[[ "$host" == ::1 ]] && bind_addr=::1

# A pidfile of a live redis-server means a previous run is still starting (or loading a large dump): wait for
# it instead of starting a second one that would fail to bind.
started="started"
old_pid="$(cat "$pidfile" 2>/dev/null || true)"
if [[ "$old_pid" =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$old_pid/comm" 2>/dev/null || true)" == redis* ]]; then
    started="waited for the already running"
else
    rm -f "$pidfile"
    "$server" --port "$port" --bind "$bind_addr" --dir "$data_dir" --daemonize yes \
        --pidfile "$pidfile" --logfile "$logfile" </dev/null ||
        die "redis-server failed to start; see $logfile"
fi

for _ in $(seq 1 100); do
    if answers; then
        say "${installed}${started} redis-server on $bind_addr:$port (data $data_dir, log $logfile)"
        exit 0
    fi
    sleep 0.1
done
tail -n 20 "$logfile" >&2 2>/dev/null || true
die "redis-server on $bind_addr:$port did not answer PING within 10 s; see $logfile"
