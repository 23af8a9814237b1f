#!/usr/bin/env bash
# Laptop dev cluster: a local S3 endpoint (moto, in memory, http://127.0.0.1:9000, bucket dfd-dev)
# and a local Ray head whose dashboard and job server listen on http://127.0.0.1:8265.
#
#   eval "$(cluster/up.sh)"      # start (or find running); export RAY_API_SERVER_ADDRESS, AWS_* ...
#   ray job submit --runtime-env cluster/runtime_env.yaml -- \
#       python jobs/make_dataset.py --out s3://dfd-dev/data n_scenes=8
#   cluster/status.sh; cluster/down.sh
#
# The head runs with the venv first on PATH, so jobs' `python` is the venv's, and with the local
# S3 endpoint and its dummy keys in its environment, so jobs can read and write s3://dfd-dev/.
# Idempotent: what already runs is left alone. Exports go to stdout, messages to stderr.
#
# The job CLI reads the dashboard URL from RAY_API_SERVER_ADDRESS (falling back to RAY_ADDRESS).
# RAY_ADDRESS itself is left unset: set to an http:// URL it breaks every ray.init() in that shell
# (`dfd-ray fit`, `make test`), and jobs get the cluster's address from Ray anyway.
set -euo pipefail
. "$(dirname "$0")/common.sh"

[ -x "$VENV/bin/ray" ] || { log "up: no $VENV/bin/ray; run 'make install' first (or set DFD_VENV)"; exit 1; }
[ -x "$VENV/bin/moto_server" ] || { log "up: no $VENV/bin/moto_server; pip install 'moto[server]'"; exit 1; }
mkdir -p "$STATE"

# A new session for each server, so that it outlives this shell and down.sh can end its group.
if command -v setsid >/dev/null 2>&1; then DETACH=setsid; else DETACH=nohup; fi

# wait_for URL PIDFILE NAME LOG: poll URL until it answers; fail early if the process died.
wait_for() {
    local i
    for i in $(seq 1 120); do
        if http_ok "$1"; then return 0; fi
        if ! kill -0 "$(cat "$2")" 2>/dev/null; then
            log "up: $3 exited during start; last lines of $4:"
            tail -n 30 "$4" >&2 || true
            return 1
        fi
        sleep 1
    done
    log "up: $3 did not answer at $1 within 120 s (log: $4)"
    return 1
}

# --- local S3 -----------------------------------------------------------------------------------
if alive "$S3_PID_FILE" moto_server; then
    log "s3: already running (pid $(cat "$S3_PID_FILE")) at $S3_URL"
else
    if http_ok "$S3_URL/"; then
        log "up: $S3_URL already answers but was not started by this script; stop it or set DFD_S3_PORT"
        exit 1
    fi
    $DETACH "$VENV/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$STATE/s3.log" 2>&1 </dev/null &
    echo $! >"$S3_PID_FILE"
    wait_for "$S3_URL/" "$S3_PID_FILE" "moto_server" "$STATE/s3.log"
    log "s3: started (pid $(cat "$S3_PID_FILE")) at $S3_URL"
fi
# shellcheck disable=SC2086  # S3_ENV is a list of NAME=value words
env $S3_ENV "$VENV/bin/python" - "$S3_BUCKET" <<'PY'
import sys, boto3
s3 = boto3.client("s3")
if sys.argv[1] not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
    s3.create_bucket(Bucket=sys.argv[1])
PY
log "s3: bucket s3://$S3_BUCKET ready"

# --- Ray head -----------------------------------------------------------------------------------
if alive "$RAY_PID_FILE" "ray start"; then
    log "ray: already running (pid $(cat "$RAY_PID_FILE")), dashboard $DASHBOARD_URL"
else
    if http_ok "$DASHBOARD_URL/api/version"; then
        log "up: $DASHBOARD_URL already answers but was not started by this script; stop it or set DFD_DASHBOARD_PORT"
        exit 1
    fi
    # Ray's fixed default ports for the dashboard agent (52365) and Ray Client (10001) clash with
    # any other Ray on this machine (a test run, a notebook), and a head whose agent can't bind
    # accepts no jobs: take free ones unless told otherwise.
    agent_port=${DFD_DASHBOARD_AGENT_PORT:-$(free_port)}
    client_port=${DFD_RAY_CLIENT_PORT:-$(free_port)}
    # --block keeps `ray start` in the foreground of its own session: SIGTERM to it drains and
    # stops the head's processes (down.sh), and on Linux its children die with it.
    # shellcheck disable=SC2086
    $DETACH env -u RAY_ADDRESS "PATH=$VENV/bin:$PATH" $S3_ENV \
        "$VENV/bin/ray" start --head --block \
        --port="$RAY_PORT" \
        --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" --include-dashboard=true \
        --num-cpus="$RAY_CPUS" --object-store-memory=$((OBJECT_STORE_MB * 1024 * 1024)) \
        --dashboard-agent-listen-port="$agent_port" --ray-client-server-port="$client_port" \
        --temp-dir="$STATE/ray" --disable-usage-stats \
        $RAY_START_ARGS \
        >"$STATE/ray.log" 2>&1 </dev/null &
    echo $! >"$RAY_PID_FILE"
    wait_for "$DASHBOARD_URL/api/version" "$RAY_PID_FILE" "ray start" "$STATE/ray.log"
    log "ray: started (pid $(cat "$RAY_PID_FILE")), $RAY_CPUS CPUs, dashboard $DASHBOARD_URL"
fi

log "logs: $STATE/{ray,s3}.log and $STATE/ray/session_latest/logs; stop with cluster/down.sh"
cat <<EOF
unset RAY_ADDRESS
export RAY_API_SERVER_ADDRESS=$DASHBOARD_URL
export RAY_AUTH_MODE=$RAY_AUTH_MODE
export AWS_ENDPOINT_URL=$S3_URL
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_DEFAULT_REGION=us-east-1
EOF
