#!/usr/bin/env bash
# A single-node Slurm on this machine, to try erasenet's cluster path (hydra/launcher=slurm, slurm_ddp) and to
# run its Slurm tests: munge, slurmctld and slurmd on localhost, one partition with this machine's CPUs.
#
#   sudo scripts/slurm_local.sh start   # installs slurm-wlm and munge with apt-get if missing, then starts them
#   sudo scripts/slurm_local.sh stop    # stops the daemons and removes what start wrote
#
# Both are idempotent and print nothing on success. There is no accounting database (slurmdbd), so `sacct` does
# not work here; erasenet's Slurm launcher reads job states from `squeue` instead (docs/distributed.md).
# Needs root: the daemons, /etc/slurm/slurm.conf and apt-get.
set -euo pipefail

STATE=/var/lib/erasenet-slurm          # everything start creates, except slurm.conf
CONF=/etc/slurm/slurm.conf
MARK="# written by erasenet scripts/slurm_local.sh"
NODE=localhost

die() { echo "slurm_local.sh: $*" >&2; exit 1; }

need_root() { [[ $(id -u) == 0 ]] || die "needs root (the daemons, $CONF and apt-get): run it with sudo."; }

install_packages() {
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && return
    export DEBIAN_FRONTEND=noninteractive
    local out
    # a fresh machine or container may have no package lists yet
    out=$( { apt-get install -y -qq slurm-wlm munge || { apt-get update -qq && apt-get install -y -qq slurm-wlm munge; }; } 2>&1) \
        || { echo "$out" >&2; die "could not install slurm-wlm and munge with apt-get (its output is above)."; }
}

running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_conf() {
    local cpus mem
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
    if [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script: this machine already has a Slurm configuration."
    fi
    mkdir -p /etc/slurm "$STATE"/{ctld,spool,log,run}
    cat >"$CONF.tmp" <<EOF
$MARK; 'scripts/slurm_local.sh stop' removes it
ClusterName=erasenet-local
SlurmctldHost=$NODE
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# no cgroups: this also runs inside containers
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SlurmdParameters=config_overrides
# seconds between SIGTERM and SIGKILL when a job is cancelled or requeued
KillWait=10
# finished jobs stay visible to squeue (and so to the launcher) this long
MinJobAge=3600
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    mv "$CONF.tmp" "$CONF"
}

start_munge() {
    [[ -s /etc/munge/munge.key ]] || { mungekey --create >/dev/null 2>&1 || dd if=/dev/urandom bs=1 count=1024 \
        of=/etc/munge/munge.key 2>/dev/null; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
    munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return
    mkdir -p /run/munge && chown munge:munge /run/munge
    runuser -u munge -- /usr/sbin/munged
    cp /run/munge/munged.pid "$STATE/run/munged.pid"  # started here, so stop stops it
    for _ in $(seq 50); do munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return; sleep 0.1; done
    die "munged did not start (see /var/log/munge/munged.log)."
}

wait_idle() {
    local state
    for _ in $(seq 300); do
        state=$(sinfo -h -n "$NODE" -o %t 2>/dev/null || true)
        case $state in
            idle|mix|alloc) return ;;
            down*|drain*) scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
        esac
        sleep 0.2
    done
    die "the node did not become idle (state '${state:-none}'); see $STATE/log/slurmctld.log and slurmd.log."
}

start() {
    need_root
    install_packages
    write_conf
    start_munge
    running "$STATE/run/slurmctld.pid" || slurmctld || die "slurmctld did not start; see $STATE/log/slurmctld.log."
    running "$STATE/run/slurmd.pid" || slurmd -N "$NODE" || die "slurmd did not start; see $STATE/log/slurmd.log."
    wait_idle
}

stop_daemon() {
    local pidfile=$1
    running "$pidfile" || return 0
    local pid
    pid=$(cat "$pidfile")
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

stop() {
    need_root
    if [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF was not written by this script: leaving this machine's Slurm alone."
    fi
    if running "$STATE/run/slurmctld.pid"; then  # end the jobs first: their steps would outlive slurmd
        scancel --quiet --full --partition=local 2>/dev/null || true
        for _ in $(seq 150); do [[ -z $(squeue -h -o %i -p local 2>/dev/null) ]] && break; sleep 0.1; done
    fi
    stop_daemon "$STATE/run/slurmd.pid"
    stop_daemon "$STATE/run/slurmctld.pid"
    stop_daemon "$STATE/run/munged.pid"
    rm -rf "$STATE" "$CONF"
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
