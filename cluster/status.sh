#!/usr/bin/env bash
# State of the laptop dev cluster of cluster/up.sh: `ray status` of the head, whether the
# dashboard / job server and the local S3 endpoint answer. Exit 0 when all is up, 1 otherwise.
set -euo pipefail
. "$(dirname "$0")/common.sh"

ok=0
if alive "$RAY_PID_FILE" "ray start"; then
    echo "ray head: running (pid $(cat "$RAY_PID_FILE")), GCS 127.0.0.1:$RAY_PORT"
    # --address: this head's GCS, whatever RAY_ADDRESS in the caller's shell says. Right after
    # start the autoscaler has published nothing yet ("No cluster status"): retry for a while.
    for _ in $(seq 1 15); do
        report=$("$VENV/bin/ray" status --address "127.0.0.1:$RAY_PORT" 2>&1) || { ok=1; break; }
        case $report in *"No cluster status"*) sleep 1 ;; *) break ;; esac
    done
    printf '%s\n' "$report"
    case $report in *"Resources"*) ;; *) ok=1 ;; esac
else
    echo "ray head: not running"
    ok=1
fi
if http_ok "$DASHBOARD_URL/api/version"; then
    echo "dashboard / job server: $DASHBOARD_URL answers"
else
    echo "dashboard / job server: $DASHBOARD_URL does not answer"
    ok=1
fi
if alive "$S3_PID_FILE" moto_server && http_ok "$S3_URL/"; then
    # shellcheck disable=SC2086
    buckets=$(env $S3_ENV "$VENV/bin/python" -c \
        'import boto3; print(" ".join("s3://" + b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]))')
    echo "s3: $S3_URL answers (pid $(cat "$S3_PID_FILE")); buckets: ${buckets:-none}"
else
    echo "s3: $S3_URL not running"
    ok=1
fi
exit "$ok"
