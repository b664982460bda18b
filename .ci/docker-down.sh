#!/usr/bin/env bash
# Stop the Docker engine that .ci/docker-up.sh started (and only that one).
set -euo pipefail

PID_FILE="${HRM_EVOLVE_DOCKERD_PID:-/tmp/hrm-evolve-dockerd.pid}"

if [ ! -f "$PID_FILE" ]; then
    echo "docker-down: no pid file ($PID_FILE); docker-up started nothing, leaving any engine alone"
    exit 0
fi
pid="$(cat "$PID_FILE")"
if ! kill -0 "$pid" 2>/dev/null; then
    echo "docker-down: dockerd $pid is not running"
    rm -f "$PID_FILE"
    exit 0
fi
echo "docker-down: stopping dockerd $pid"
kill -TERM "$pid"
for _ in $(seq 1 30); do
    if ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$PID_FILE"
        echo "docker-down: stopped"
        exit 0
    fi
    sleep 1
done
echo "docker-down: dockerd $pid still alive after 30s; sending SIGKILL" >&2
kill -KILL "$pid" 2>/dev/null || true
rm -f "$PID_FILE"
