#!/usr/bin/env bash
# Stop what tests/services/setup.sh started (best effort), using the pid files in
# ${SERVICES_DIR:-/tmp/orchestrator-services}. Daemons that setup.sh found already
# running (no pid file of ours) are left alone.
#
# Usage: tests/services/stop.sh [slurm|moto|all]      (default: all)
set -uo pipefail

SERVICES_DIR=${SERVICES_DIR:-/tmp/orchestrator-services}

log() { printf '[services] %s\n' "$*"; }

# stop_pidfile NAME PIDFILE EXPECTED_CMDLINE_WORD
stop_pidfile() {
    local name=$1 pidfile=$2 expect=$3 pid i
    [[ -s $pidfile ]] || return 0
    pid=$(<"$pidfile")
    if [[ ! $pid =~ ^[0-9]+$ ]] || ! kill -0 "$pid" 2>/dev/null; then
        rm -f "$pidfile"
        return 0
    fi
    # never signal a recycled pid that now belongs to something else
    if ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$expect"; then
        log "$name: pid $pid is not $expect any more; leaving it"
        rm -f "$pidfile"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null
        log "$name: killed (pid $pid)"
    else
        log "$name: stopped (pid $pid)"
    fi
    rm -f "$pidfile"
}

stop_slurm() {
    stop_pidfile slurmd "$SERVICES_DIR/slurmd.pid" slurmd
    stop_pidfile slurmctld "$SERVICES_DIR/slurmctld.pid" slurmctld
    stop_pidfile slurmdbd "$SERVICES_DIR/slurmdbd.pid" slurmdbd
    if [[ -e $SERVICES_DIR/mariadb.started ]]; then
        service mariadb stop >>"$SERVICES_DIR/mariadb.log" 2>&1 && log "mariadb: stopped"
        rm -f "$SERVICES_DIR/mariadb.started"
    fi
    stop_pidfile munged "$SERVICES_DIR/munged.pid" munged
}

stop_moto() {
    stop_pidfile moto_server "$SERVICES_DIR/moto.pid" moto_server
}

case ${1:-all} in
slurm) stop_slurm ;;
moto) stop_moto ;;
all)
    stop_moto
    stop_slurm
    ;;
*)
    echo "usage: $0 [slurm|moto|all]" >&2
    exit 2
    ;;
esac
exit 0
