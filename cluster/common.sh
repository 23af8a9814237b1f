# Sourced by cluster/up.sh, down.sh and status.sh: ports, paths and the auth mode, in one place.
# Every value can be overridden from the environment (DFD_* variables).

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${DFD_VENV:-$ROOT/.venv}
# Pid files, logs and Ray's temp dir. Short and under /tmp: Ray's socket paths live below it and
# must stay under ~100 characters.
STATE=${DFD_CLUSTER_STATE:-/tmp/dfd-ray-cluster-$(id -u)}
RAY_PORT=${DFD_RAY_PORT:-6379}
DASHBOARD_PORT=${DFD_DASHBOARD_PORT:-8265}
S3_PORT=${DFD_S3_PORT:-9000}
S3_BUCKET=${DFD_S3_BUCKET:-dfd-dev}
# Logical CPUs: more than the cores is fine, and lets fractional tasks and actors schedule.
RAY_CPUS=${DFD_RAY_CPUS:-4}
OBJECT_STORE_MB=${DFD_OBJECT_STORE_MB:-1024}
# Extra `ray start` flags, word-split (e.g. "--min-worker-port=20000 --max-worker-port=29999").
RAY_START_ARGS=${DFD_RAY_START_ARGS:-}

RAY_PID_FILE=$STATE/ray.pid
S3_PID_FILE=$STATE/s3.pid
DASHBOARD_URL=http://127.0.0.1:$DASHBOARD_PORT
S3_URL=http://127.0.0.1:$S3_PORT

# Ray 2.60 enables token auth unless told otherwise; the head, `ray status`, `ray job submit` and
# the jobs' ray.init() must agree. A local dev cluster bound to 127.0.0.1 runs without it.
export RAY_AUTH_MODE=disabled

# Dummy credentials for the local S3 endpoint (moto accepts any).
S3_ENV="AWS_ENDPOINT_URL=$S3_URL AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1"

log() { printf '%s\n' "$*" >&2; }

# alive PIDFILE EXPECTED: the pid in PIDFILE runs and its command line contains EXPECTED
# (so a stale pid file whose number was reused by another process is never signalled).
alive() {
    local pid
    [ -f "$1" ] || return 1
    pid=$(cat "$1")
    [ -n "$pid" ] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    ps -p "$pid" -o args= 2>/dev/null | grep -q -- "$2"
}

# free_port: a TCP port nothing listens on now.
free_port() {
    "$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'
}

# http_ok URL: true when URL answers 2xx within 2 s.
http_ok() {
    "$VENV/bin/python" - "$1" <<'PY' 2>/dev/null
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
        sys.exit(0 if 200 <= r.status < 300 else 1)
except Exception:
    sys.exit(1)
PY
}
