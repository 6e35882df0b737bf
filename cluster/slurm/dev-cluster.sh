#!/usr/bin/env bash
# A real Slurm cluster on one machine, for tests, CI and trying the Slurm backend.
#
#   cluster/slurm/dev-cluster.sh up [--nodes N]   install if missing, configure, start, wait until idle
#   cluster/slurm/dev-cluster.sh status           daemons and nodes; exit 0 only when every node is usable
#   cluster/slurm/dev-cluster.sh env              print `export SLURM_CONF=...` for the client commands
#   cluster/slurm/dev-cluster.sh down             cancel the jobs, stop only the daemons `up` started
#
# Debian's slurm-wlm is built with multiple-slurmd support, so one host can present N virtual nodes
# (one `slurmd -N nX` each, on its own port). No systemd is needed. Needs root (apt, munge, slurmd
# launching jobs); on a laptop, run it in a Debian/Ubuntu container or VM.
#
# Settings (environment):
#   LLMOPS_SLURM_DEV_DIR    state, logs and slurm.conf       (default /tmp/llmops-slurm-dev)
#   LLMOPS_SLURM_DEV_NODES  virtual nodes                    (default 2)
#   LLMOPS_SLURM_DEV_PORT   slurmctld port; slurmd nodes use the ports after it (default 16817,
#                           away from Slurm's 6817 so a real installation on the host is not disturbed)
#   LLMOPS_SLURM_DEV_PROCTRACK  cgroup (default) or linuxproc, for machines where slurmd cannot use cgroups
set -euo pipefail

DIR=${LLMOPS_SLURM_DEV_DIR:-/tmp/llmops-slurm-dev}
NODES=${LLMOPS_SLURM_DEV_NODES:-2}
PORT=${LLMOPS_SLURM_DEV_PORT:-16817}
PROCTRACK=${LLMOPS_SLURM_DEV_PROCTRACK:-cgroup}
CONF=$DIR/slurm.conf
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HOSTS_TAG="# llmops-slurm-dev"

log() { echo "dev-cluster: $*" >&2; }
die() { log "error: $*"; exit 1; }

node_names() { local i; for ((i = 1; i <= NODES; i++)); do echo "n$i"; done; }

install_if_missing() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return
    fi
    [ "$(id -u)" = 0 ] || die "Slurm is not installed; run as root to install it (apt-get install slurm-wlm munge)"
    log "installing slurm-wlm and munge"
    apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1 || {
        apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null
    }
}

# Node names must resolve to this host for srun and for torchrun's rendezvous at the first node.
add_hosts() {
    local name
    for name in $(node_names); do
        getent hosts "$name" >/dev/null || echo "127.0.0.1 $name $HOSTS_TAG" >>/etc/hosts
    done
}

remove_hosts() {
    # /etc/hosts may be a bind mount (containers): rewrite it in place rather than replacing the file.
    if grep -q "$HOSTS_TAG" /etc/hosts 2>/dev/null; then
        local kept
        kept=$(grep -v "$HOSTS_TAG" /etc/hosts)
        printf '%s\n' "$kept" >/etc/hosts
    fi
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "munged is already running; using it"
        return
    fi
    [ -s /etc/munge/munge.key ] || { mungekey --create >/dev/null 2>&1 || \
        (dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null); \
        chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
    runuser -u munge -- munged
    cp /run/munge/munged.pid "$DIR/started-munged.pid"   # ours to stop on `down`
}

write_conf() {
    local host cpus mem name i
    host=$(hostname)
    cpus=$(nproc)
    # Every virtual node offers the whole machine; they share it, which is the point of a dev cluster.
    mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 ))
    mkdir -p "$DIR/state" "$DIR/log" "$DIR/spool"
    cat >"$CONF" <<EOF
# Written by cluster/slurm/dev-cluster.sh: a $NODES-node Slurm cluster on one host.
ClusterName=llmops-dev
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$PORT
SlurmUser=root
AuthType=auth/munge
# A requeued job may start again only after cred_expire + 1 s (default 121 s); steps must launch within it.
AuthInfo=cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
# Processes are tracked in cgroups, so that everything a job started ends with it, orphans included
# (a killed training process can leave its checkpoint writers behind); tasks are not bound to cores.
ProctrackType=proctrack/$PROCTRACK
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
# The main scheduler and backfill run every 5 s instead of 60 s / 30 s, so requeued jobs start promptly.
SchedulerParameters=sched_interval=5,bf_interval=5
# A job whose dependency can never be satisfied (its predecessor failed) is cancelled, not left pending.
DependencyParameters=kill_invalid_depend
# SIGTERM, then SIGKILL this many seconds later: the window a job has to checkpoint on scancel/requeue.
KillWait=30
ReturnToService=2
# No slurmdbd: sacct has no data. Finished jobs stay visible to squeue/scontrol for MinJobAge seconds.
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log
MinJobAge=300
# The repository's GPU health-check examples run for real here (they pass on nodes without GPUs).
Prolog=$HERE/prolog.sh
Epilog=$HERE/epilog.sh
EOF
    cat >"$DIR/cgroup.conf" <<EOF
# Track processes only; no resource constraints between the virtual nodes, which share the machine.
# IgnoreSystemd: with cgroup v2 and no systemd, slurmd makes its cgroups itself.
CgroupPlugin=autodetect
IgnoreSystemd=yes
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
EOF
    i=0
    for name in $(node_names); do
        i=$((i + 1))
        echo "NodeName=$name NodeHostname=$host NodeAddr=127.0.0.1 Port=$((PORT + i)) CPUs=$cpus RealMemory=$mem State=UNKNOWN" >>"$CONF"
    done
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP" >>"$CONF"
}

running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_idle() {
    local deadline=$((SECONDS + 60)) states
    while ((SECONDS < deadline)); do
        states=$(SLURM_CONF=$CONF sinfo -h -N -o '%t' 2>/dev/null | sort -u | tr '\n' ' ')
        [ "$states" = "idle " ] && return 0
        sleep 0.5
    done
    die "nodes did not become idle within 60 s (states: ${states:-none}); see $DIR/log/"
}

cmd_up() {
    while [ $# -gt 0 ]; do
        case $1 in
            --nodes) NODES=$2; shift 2 ;;
            *) die "unknown option $1" ;;
        esac
    done
    if running "$DIR/slurmctld.pid"; then
        log "already up ($CONF)"
        wait_idle
        return
    fi
    [ "$(id -u)" = 0 ] || die "run as root: munged and slurmd (which launches jobs) need it"
    install_if_missing
    mkdir -p "$DIR"
    rm -rf "$DIR/state" "$DIR/spool"  # a fresh cluster: no jobs left over from an earlier `up`
    write_conf
    add_hosts
    start_munge
    slurmctld -f "$CONF"
    for name in $(node_names); do
        slurmd -f "$CONF" -N "$name"
    done
    wait_idle
    log "up: $NODES node(s) idle; clients need: export SLURM_CONF=$CONF"
}

cmd_status() {
    [ -f "$CONF" ] || { log "down (no $CONF)"; return 1; }
    running "$DIR/slurmctld.pid" || { log "down (slurmctld is not running)"; return 1; }
    SLURM_CONF=$CONF sinfo -N -o '%N %P %t %c %m'
    [ "$(SLURM_CONF=$CONF sinfo -h -N -o '%t' | grep -cv -e idle -e alloc -e mix)" = 0 ]
}

cmd_down() {
    [ -f "$CONF" ] || { log "nothing to stop"; return 0; }
    if running "$DIR/slurmctld.pid"; then
        # Jobs first: slurmstepd outlives slurmd, so stopping the daemons alone would orphan them.
        SLURM_CONF=$CONF scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
        local deadline=$((SECONDS + 40))
        while ((SECONDS < deadline)) && [ -n "$(SLURM_CONF=$CONF squeue -h -t R,CG -o %i 2>/dev/null)" ]; do
            sleep 1
        done
    fi
    local pidfile pid
    for pidfile in "$DIR"/slurmd-*.pid "$DIR/slurmctld.pid" "$DIR/started-munged.pid"; do
        [ -s "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null && while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
        rm -f "$pidfile"
    done
    remove_hosts
    log "down"
}

case ${1:-} in
    up) shift; cmd_up "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
