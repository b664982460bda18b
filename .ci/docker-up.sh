#!/usr/bin/env bash
# Start a Docker engine for CI if none answers (installing docker.io, debootstrap and bubblewrap when missing).
# What it starts is recorded in a pid file so .ci/docker-down.sh stops only that.
set -euo pipefail

PID_FILE="${HRM_EVOLVE_DOCKERD_PID:-/tmp/hrm-evolve-dockerd.pid}"
LOG_FILE="${HRM_EVOLVE_DOCKERD_LOG:-/tmp/hrm-evolve-dockerd.log}"
WAIT_S="${HRM_EVOLVE_DOCKERD_WAIT:-90}"

missing=""
command -v dockerd >/dev/null 2>&1 || missing="$missing docker.io"
command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
command -v bwrap >/dev/null 2>&1 || missing="$missing bubblewrap"
if [ -n "$missing" ]; then
    echo "docker-up: installing$missing with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq $missing
fi

if docker info >/dev/null 2>&1; then
    echo "docker-up: an engine already answers; nothing started"
    exit 0
fi

if [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
    echo "docker-up: dockerd $(cat "$PID_FILE") started earlier is still starting; waiting"
else
    echo "docker-up: starting dockerd (log: $LOG_FILE)"
    # setsid: the engine outlives this shell; its pid is what docker-down.sh will stop.
    setsid dockerd >"$LOG_FILE" 2>&1 < /dev/null &
    echo $! >"$PID_FILE"
fi

for _ in $(seq 1 "$WAIT_S"); do
    if docker info >/dev/null 2>&1; then
        echo "docker-up: engine ready ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
        exit 0
    fi
    if ! kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
        echo "docker-up: dockerd exited; last lines of $LOG_FILE:" >&2
        tail -n 30 "$LOG_FILE" >&2 || true
        rm -f "$PID_FILE"
        exit 1
    fi
    sleep 1
done
echo "docker-up: engine did not answer within ${WAIT_S}s; last lines of $LOG_FILE:" >&2
tail -n 30 "$LOG_FILE" >&2 || true
exit 1
