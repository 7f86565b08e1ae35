#!/usr/bin/env bash
# Stand up the local test services on 127.0.0.1 (Debian 12, root, no systemd):
#   slurm : single-node Slurm 22.05 from Debian packages (munge, MariaDB, slurmdbd,
#           slurmctld, slurmd -N localhost), account "orchestrator" for root, smoke job.
#   moto  : moto_server (S3 + DynamoDB) on ${MOTO_PORT:-5555}.
#   chromium : Debian's chromium for the headless dashboard tests, smoke render.
#
# Usage: tests/services/setup.sh [slurm|moto|chromium|all]      (default: all)
# Idempotent: healthy daemons are left alone, so a second run takes a second or two.
# Daemon logs and pid files go to ${SERVICES_DIR:-/tmp/orchestrator-services};
# tests/services/stop.sh stops what this script started.
#
# Environment: SERVICES_DIR, VENV (default: <repo>/.venv), MOTO_PORT (5555),
#              SLURM_CLUSTER (orchestrator), SLURM_ACCOUNT (orchestrator).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$HERE/../.." && pwd)

SERVICES_DIR=${SERVICES_DIR:-/tmp/orchestrator-services}
VENV=${VENV:-$REPO_ROOT/.venv}
MOTO_HOST=127.0.0.1
MOTO_PORT=${MOTO_PORT:-5555}

SLURM_CLUSTER=${SLURM_CLUSTER:-orchestrator}
SLURM_ACCOUNT=${SLURM_ACCOUNT:-orchestrator}
SLURM_PARTITION=debug
SLURM_NODE=localhost
SLURM_ETC=/etc/slurm
SLURM_STATE=/var/lib/slurm
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=slurmdbd-local-only # MariaDB listens for this user on the local socket only

APT_PACKAGES=(slurm-wlm munge slurmdbd mariadb-server)

log() { printf '[services] %s\n' "$*"; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

# die with the tail of a daemon's log
fail_daemon() { # NAME LOGFILE MESSAGE
    local name=$1 logfile=$2 msg=$3
    {
        printf '[services] ERROR: %s %s; see its log: %s\n' "$name" "$msg" "$logfile"
        if [[ -s $logfile ]]; then
            printf '[services] --- last lines of %s ---\n' "$logfile"
            tail -n 20 "$logfile" | sed 's/^/    /'
        fi
    } >&2
    exit 1
}

# wait_for NAME LOGFILE TIMEOUT_S CMD...: poll CMD (each try bounded to 10 s) until it succeeds
wait_for() {
    local name=$1 logfile=$2 limit=$3
    shift 3
    local deadline=$((SECONDS + limit))
    until timeout 10 "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            fail_daemon "$name" "$logfile" "did not become ready within ${limit}s"
        fi
        sleep 0.3
    done
}

pid_alive() { # PIDFILE
    local pid
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

elapsed() { printf '%ss' "$SECONDS"; }

# --------------------------------------------------------------------------- slurm

install_packages() { # PACKAGE... (default: the Slurm packages)
    local missing=() p
    (($# > 0)) || set -- "${APT_PACKAGES[@]}"
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    log "installing ${missing[*]} (apt log: $SERVICES_DIR/apt.log)"
    export DEBIAN_FRONTEND=noninteractive
    {
        apt-get update -q &&
            apt-get install -y -q --no-install-recommends "$@"
    } >>"$SERVICES_DIR/apt.log" 2>&1 || fail_daemon apt-get "$SERVICES_DIR/apt.log" "failed"
    log "packages installed ($(elapsed))"
}

start_munge() {
    if timeout 5 bash -c 'munge -n | unmunge' >/dev/null 2>&1; then
        log "munge: already running"
        return 0
    fi
    local logfile=$SERVICES_DIR/munged.log
    install -d -o munge -g munge -m 0755 /run/munge
    [[ -f $logfile ]] || install -o munge -g munge -m 0640 /dev/null "$logfile"
    # a stale socket/pid from a killed munged makes a new one refuse to start
    if ! pid_alive /run/munge/munged.pid; then
        rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock /run/munge/munged.pid
        runuser -u munge -- /usr/sbin/munged --log-file="$logfile" </dev/null >>"$logfile" 2>&1 ||
            fail_daemon munged "$logfile" "failed to start"
    fi
    wait_for munged "$logfile" 10 bash -c 'munge -n | unmunge'
    cp /run/munge/munged.pid "$SERVICES_DIR/munged.pid" 2>/dev/null || true
    log "munge: started ($(elapsed))"
}

start_mariadb() {
    local logfile=$SERVICES_DIR/mariadb.log
    if timeout 5 mariadb-admin --connect-timeout=2 ping >/dev/null 2>&1; then
        log "mariadb: already running"
    else
        service mariadb start </dev/null >>"$logfile" 2>&1 || true
        wait_for mariadb "$logfile (and /var/log/mysql/)" 60 mariadb-admin --connect-timeout=2 ping
        touch "$SERVICES_DIR/mariadb.started"
        log "mariadb: started ($(elapsed))"
    fi
    mariadb -e "CREATE DATABASE IF NOT EXISTS \`$DB_NAME\`;
        CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
        ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
        GRANT ALL PRIVILEGES ON \`$DB_NAME\`.* TO '$DB_USER'@'localhost';" ||
        die "mariadb: could not create database $DB_NAME / user $DB_USER"
}

# Write FILE from stdin only if its content changed; returns 0 if it changed.
write_if_changed() { # FILE MODE
    local file=$1 mode=$2 tmp
    tmp=$(mktemp)
    cat >"$tmp"
    if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"
        chmod "$mode" "$file"
        return 1
    fi
    install -m "$mode" -o root -g root "$tmp" "$file"
    rm -f "$tmp"
    return 0
}

SLURM_CONF_CHANGED=0
SLURMDBD_CONF_CHANGED=0
# pid files named by the configs in place before this run (SERVICES_DIR may have changed)
OLD_SLURMCTLD_PID=$SERVICES_DIR/slurmctld.pid
OLD_SLURMD_PID=$SERVICES_DIR/slurmd.pid
OLD_SLURMDBD_PID=$SERVICES_DIR/slurmdbd.pid

conf_value() { # FILE KEY
    [[ -f $1 ]] && sed -n "s/^$2=//p" "$1" | tail -n1
}

write_slurm_configs() {
    local cpus mem_mib real_mem
    cpus=$(nproc)
    mem_mib=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    real_mem=$((mem_mib - 1024))
    ((real_mem > 0)) || real_mem=$mem_mib
    install -d -m 0755 "$SLURM_ETC" "$SLURM_STATE" "$SLURM_STATE/slurmctld" "$SLURM_STATE/slurmd"
    OLD_SLURMCTLD_PID=$(conf_value "$SLURM_ETC/slurm.conf" SlurmctldPidFile) || true
    OLD_SLURMD_PID=$(conf_value "$SLURM_ETC/slurm.conf" SlurmdPidFile) || true
    OLD_SLURMDBD_PID=$(conf_value "$SLURM_ETC/slurmdbd.conf" PidFile) || true

    if write_if_changed "$SLURM_ETC/slurm.conf" 0644 <<EOF; then
# Generated by tests/services/setup.sh -- single-node test cluster on 127.0.0.1.
ClusterName=$SLURM_CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$SLURM_STATE/slurmctld
SlurmdSpoolDir=$SLURM_STATE/slurmd
SlurmctldPidFile=$SERVICES_DIR/slurmctld.pid
SlurmdPidFile=$SERVICES_DIR/slurmd.pid
SlurmctldLogFile=$SERVICES_DIR/slurmctld.log
SlurmdLogFile=$SERVICES_DIR/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=none
# no cgroups in this container
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# jobs that ask for no memory get this much per CPU instead of the whole node
DefMemPerCPU=1024
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=300
KillWait=5
InactiveLimit=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobCompType=jobcomp/none
NodeName=$SLURM_NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mem State=UNKNOWN
PartitionName=$SLURM_PARTITION Nodes=$SLURM_NODE Default=YES MaxTime=INFINITE State=UP
EOF
        SLURM_CONF_CHANGED=1
        log "wrote $SLURM_ETC/slurm.conf (CPUs=$cpus RealMemory=$real_mem)"
    fi

    if write_if_changed "$SLURM_ETC/slurmdbd.conf" 0600 <<EOF; then
# Generated by tests/services/setup.sh
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
PidFile=$SERVICES_DIR/slurmdbd.pid
LogFile=$SERVICES_DIR/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
        SLURMDBD_CONF_CHANGED=1
        log "wrote $SLURM_ETC/slurmdbd.conf"
    fi
}

# stop_pidfile NAME PIDFILE: used only when our own config changed under a running daemon
stop_pidfile() {
    local name=$1 pidfile=$2 pid i
    [[ -n $pidfile ]] && pid_alive "$pidfile" || return 0
    pid=$(<"$pidfile")
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$name" || return 0
    log "$name: restarting for the new configuration"
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

start_slurmdbd() {
    local logfile=$SERVICES_DIR/slurmdbd.log pidfile=$SERVICES_DIR/slurmdbd.pid
    ((SLURMDBD_CONF_CHANGED)) && stop_pidfile slurmdbd "$OLD_SLURMDBD_PID"
    if timeout 5 sacctmgr -n list cluster >/dev/null 2>&1; then
        log "slurmdbd: already running"
        return 0
    fi
    if ! pid_alive "$pidfile"; then
        /usr/sbin/slurmdbd </dev/null >>"$logfile" 2>&1 || fail_daemon slurmdbd "$logfile" "failed to start"
    fi
    wait_for slurmdbd "$logfile" 60 sacctmgr -n list cluster
    log "slurmdbd: started ($(elapsed))"
}

SLURMCTLD_STARTED=0

start_slurmctld() {
    local logfile=$SERVICES_DIR/slurmctld.log pidfile=$SERVICES_DIR/slurmctld.pid
    ((SLURM_CONF_CHANGED)) && stop_pidfile slurmctld "$OLD_SLURMCTLD_PID"
    if timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'; then
        log "slurmctld: already running"
        return 0
    fi
    if ! pid_alive "$pidfile"; then
        /usr/sbin/slurmctld </dev/null >>"$logfile" 2>&1 || fail_daemon slurmctld "$logfile" "failed to start"
        SLURMCTLD_STARTED=1
    fi
    wait_for slurmctld "$logfile" 30 bash -c 'scontrol ping | grep -q "is UP"'
    log "slurmctld: started ($(elapsed))"
}

node_state() { timeout 5 sinfo -h -n "$SLURM_NODE" -o %T 2>/dev/null | head -n1; }

node_ready() {
    case $(node_state) in
    idle | mixed | allocated | completing) return 0 ;;
    *) return 1 ;;
    esac
}

start_slurmd() {
    local logfile=$SERVICES_DIR/slurmd.log pidfile=$SERVICES_DIR/slurmd.pid
    ((SLURM_CONF_CHANGED)) && stop_pidfile slurmd "$OLD_SLURMD_PID"
    if pid_alive "$pidfile" || pgrep -x slurmd >/dev/null; then
        if node_ready; then
            log "slurmd: already running (node $SLURM_NODE $(node_state))"
            return 0
        fi
        case $(node_state) in
        *drain* | down | *fail*)
            log "slurmd: node $SLURM_NODE is $(node_state); resuming it"
            scontrol update NodeName="$SLURM_NODE" State=RESUME >/dev/null 2>&1 || true
            ;;
        esac
    else
        /usr/sbin/slurmd -N "$SLURM_NODE" </dev/null >>"$logfile" 2>&1 || fail_daemon slurmd "$logfile" "failed to start"
    fi
    wait_for "slurmd (node $SLURM_NODE, state '$(node_state)')" "$logfile" 30 \
        bash -c "sinfo -h -n '$SLURM_NODE' -o %T | grep -Eqx 'idle|mixed|allocated|completing'"
    log "slurmd: started, node $SLURM_NODE $(node_state) ($(elapsed))"
}

# A slurmctld started here recovers the jobs of the test cluster's previous life from its state
# directory (a machine image taken while tests ran, a killed CI run). Their processes are gone,
# but Slurm keeps them RUNNING until their time limit, because the node's boot time predates
# them: they hold the node's CPUs and every new job pends. Nobody is waiting for them.
cancel_stale_jobs() {
    ((SLURMCTLD_STARTED)) || return 0
    local jobs
    jobs=$(timeout 10 squeue -h -o %A 2>/dev/null | tr '\n' ' ') || true
    [[ -n ${jobs// /} ]] || return 0
    # shellcheck disable=SC2086 # one argument per job id
    timeout 30 scancel $jobs || die "scancel: could not cancel jobs left from a previous run: $jobs"
    log "slurm: cancelled $(wc -w <<<"$jobs") job(s) left from the cluster's previous run: $jobs"
}

sacctmgr_has() { # sacctmgr query args...; succeeds when the query prints anything
    [[ -n $(timeout 10 sacctmgr -n -P "$@" 2>/dev/null) ]]
}

setup_account() {
    # slurmctld registers the cluster in slurmdbd shortly after it starts
    wait_for "slurmctld->slurmdbd (cluster $SLURM_CLUSTER registration)" "$SERVICES_DIR/slurmctld.log" 30 \
        bash -c "sacctmgr -n -P list cluster format=cluster | grep -qx '$SLURM_CLUSTER'"
    local user
    user=$(id -un)
    if ! sacctmgr_has list account "$SLURM_ACCOUNT" format=account; then
        sacctmgr -i add account "$SLURM_ACCOUNT" Cluster="$SLURM_CLUSTER" \
            Description="orchestrator tests" Organization=orchestrator >/dev/null ||
            die "sacctmgr: could not add account $SLURM_ACCOUNT"
        log "slurm: added account $SLURM_ACCOUNT"
    fi
    if ! sacctmgr_has list association where user="$user" account="$SLURM_ACCOUNT" cluster="$SLURM_CLUSTER" format=user; then
        sacctmgr -i add user "$user" Account="$SLURM_ACCOUNT" DefaultAccount="$SLURM_ACCOUNT" \
            Cluster="$SLURM_CLUSTER" >/dev/null ||
            die "sacctmgr: could not associate user $user with account $SLURM_ACCOUNT"
        log "slurm: associated user $user with account $SLURM_ACCOUNT"
    fi
}

smoke_slurm() {
    local jobid state deadline
    jobid=$(timeout 60 srun -A "$SLURM_ACCOUNT" -p "$SLURM_PARTITION" -N1 -n1 --mem=16 -t 1 \
        -J services-smoke sh -c 'echo $SLURM_JOB_ID' 2>>"$SERVICES_DIR/smoke.log") ||
        fail_daemon "smoke job (srun)" "$SERVICES_DIR/slurmctld.log" "failed (srun stderr in $SERVICES_DIR/smoke.log)"
    deadline=$((SECONDS + 20))
    while :; do
        state=$(timeout 10 sacct -j "$jobid" -X -n -P -o State 2>/dev/null | head -n1 || true)
        [[ $state == COMPLETED ]] && break
        ((SECONDS < deadline)) ||
            fail_daemon "smoke job $jobid (sacct state '${state:-none}')" "$SERVICES_DIR/slurmdbd.log" "not COMPLETED in sacct within 20s"
        sleep 0.3
    done
    log "slurm: smoke job $jobid COMPLETED in sacct ($(elapsed))"
}

setup_slurm() {
    install_packages
    start_munge
    start_mariadb
    write_slurm_configs
    start_slurmdbd
    start_slurmctld
    start_slurmd
    cancel_stale_jobs
    setup_account
    smoke_slurm
    log "slurm ready: cluster=$SLURM_CLUSTER partition=$SLURM_PARTITION account=$SLURM_ACCOUNT"
}

# --------------------------------------------------------------------------- moto

moto_url="http://$MOTO_HOST:$MOTO_PORT"

moto_ok() { curl -sf -o /dev/null --max-time 2 "$moto_url/"; }

setup_moto() {
    local logfile=$SERVICES_DIR/moto.log pidfile=$SERVICES_DIR/moto.pid bin started=
    [[ $MOTO_PORT =~ ^[0-9]+$ ]] && ((MOTO_PORT >= 1 && MOTO_PORT <= 65535)) ||
        die "moto: MOTO_PORT must be a TCP port number, not '$MOTO_PORT'"
    if moto_ok; then
        log "moto: already answering on $moto_url"
        return 0
    fi
    if ! pid_alive "$pidfile"; then
        bin=$VENV/bin/moto_server
        [[ -x $bin ]] || bin=$(command -v moto_server || true)
        [[ -n $bin && -x $bin ]] || die "moto: no moto_server in $VENV/bin or PATH (install moto[server] into the venv)"
        setsid "$bin" -H "$MOTO_HOST" -p "$MOTO_PORT" </dev/null >>"$logfile" 2>&1 &
        started=$!
        echo "$started" >"$pidfile"
    fi
    local deadline=$((SECONDS + 20))
    until moto_ok; do
        pid_alive "$pidfile" || fail_daemon moto_server "$logfile" "exited before answering on $moto_url"
        if ((SECONDS >= deadline)); then
            [[ -n $started ]] && kill "$started" 2>/dev/null && rm -f "$pidfile" # leave no stray server
            fail_daemon moto_server "$logfile" "did not answer on $moto_url within 20s"
        fi
        sleep 0.2
    done
    log "moto: answering on $moto_url ($(elapsed))"
}

# --------------------------------------------------------------------------- chromium

setup_chromium() {
    local logfile=$SERVICES_DIR/chromium.log
    install_packages chromium
    # a blank page rendered headless proves the browser starts in this container
    timeout 60 chromium --headless --no-sandbox --disable-gpu --no-first-run \
        --user-data-dir="$SERVICES_DIR/chromium-profile" --dump-dom about:blank \
        >/dev/null 2>>"$logfile" || fail_daemon chromium "$logfile" "cannot render headless"
    log "chromium: $(chromium --version 2>/dev/null) renders headless ($(elapsed))"
}

# --------------------------------------------------------------------------- main

main() {
    local what=${1:-all}
    case $what in
    slurm | moto | chromium | all) ;;
    -h | --help)
        sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        return 0
        ;;
    *) die "usage: $0 [slurm|moto|chromium|all]" ;;
    esac
    [[ $(id -u) == 0 ]] || [[ $what == moto ]] || die "$what setup needs root (apt-get)"
    install -d -m 0755 "$SERVICES_DIR"
    case $what in
    slurm) setup_slurm ;;
    moto) setup_moto ;;
    chromium) setup_chromium ;;
    all)
        setup_moto
        setup_chromium
        setup_slurm
        ;;
    esac
    log "done: $what ($(elapsed)); logs in $SERVICES_DIR"
}

main "$@"
