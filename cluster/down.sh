#!/usr/bin/env bash
# Stop the laptop dev cluster of cluster/up.sh: the Ray head (drained, then its whole process
# group) and the local S3 endpoint (its data is in memory and goes with it). Only processes this
# cluster's pid files name are signalled, so other Ray instances on the machine are left alone.
# Idempotent: with nothing running it says so and succeeds. Logs stay in the state directory.
set -euo pipefail
. "$(dirname "$0")/common.sh"

# stop NAME PIDFILE EXPECTED TIMEOUT_S
stop() {
    local name=$1 pidfile=$2 expected=$3 timeout=$4 pid i
    if ! alive "$pidfile" "$expected"; then
        log "$name: not running"
        rm -f "$pidfile"
        return 0
    fi
    pid=$(cat "$pidfile")
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 "$timeout"); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name: still running after ${timeout} s, killing"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    # up.sh started it as the leader of its own process group (setsid): end any stragglers.
    # (Without setsid no group has this id and nothing more is signalled.)
    if kill -0 -- "-$pid" 2>/dev/null; then
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    log "$name: stopped (pid $pid)"
}

# Ray drains for up to 30 s on SIGTERM before it stops its processes.
stop ray "$RAY_PID_FILE" "ray start" 45
stop s3 "$S3_PID_FILE" moto_server 10
