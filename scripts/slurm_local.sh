#!/usr/bin/env bash
# A single-node Slurm on this machine, to try a sweep's Slurm settings (hydra/launcher=slurm) before the cluster
# and to run the tests marked `slurm` (tests/test_slurm_real.py). Debian or Ubuntu, as root:
#
#   sudo scripts/slurm_local.sh up       # install slurm-wlm and munge if missing, write slurm.conf, start daemons
#   sudo scripts/slurm_local.sh status   # sinfo; exit 0 when the node takes jobs
#   sudo scripts/slurm_local.sh down     # stop slurmctld, slurmd and munged (queued jobs are kept in its state)
#
# `up` is idempotent: with the same configuration already running it only waits for the node to be idle.
# The node is this host: every CPU (`slurmd -C`), 90% of its memory, CPUs bound per task (TaskPlugin=task/affinity,
# as clusters do; SLURM_LOCAL_TASK_PLUGIN=task/none to leave tasks unbound), processes tracked without cgroups
# (proctrack/linuxproc: works in containers), no accounting (submitit then notes "Bypassing sacct error": harmless).
# One partition `local`; OverSubscribe=FORCE:4 lets up to 4 jobs share a CPU, so a sweep's points run together.
# A requeued job waits AuthInfo cred_expire seconds before it may start again (Slurm's default: 120 s; 30 here).
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
LOG_DIR=/var/log/slurm
TASK_PLUGIN=${SLURM_LOCAL_TASK_PLUGIN:-task/affinity}

say() { echo "slurm_local: $*"; }
die() { echo "slurm_local: $*" >&2; exit 2; }

usage() { die "usage: $0 up|down|status"; }

need_root() {
    [ "$(id -u)" -eq 0 ] || die "needs root (it installs packages and starts system daemons): run it with sudo"
}

node_state() { sinfo -h -N -o '%T' 2>/dev/null | head -n1 | tr -d '*~#!%$@^-' || true; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
        return
    fi
    command -v apt-get >/dev/null || die "slurmctld, slurmd or munged is missing and there is no apt-get to install \
slurm-wlm and munge: install Slurm and munge with this system's package manager, then run it again"
    say "installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

write_conf() {
    local host node mem tmp
    host=$(hostname -s)
    # slurmd's own view of the hardware (sockets, cores, threads), so the node is never judged smaller than said
    node=$(slurmd -C | head -n1 | sed -E 's/ UpTime=.*//; s/ RealMemory=[0-9]+//')
    mem=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
    mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
    tmp=$(mktemp)
    cat >"$tmp" <<EOF
# Written by scripts/slurm_local.sh: a single-node Slurm on $host.
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=30
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=$TASK_PLUGIN
MpiDefault=none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerParameters=sched_interval=5,bf_interval=5
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait=10
InactiveLimit=0
$node RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
EOF
    if cmp -s "$tmp" "$CONF"; then
        rm -f "$tmp"
        return 1  # unchanged
    fi
    mv "$tmp" "$CONF"
    chmod 644 "$CONF"
    say "wrote $CONF ($node RealMemory=$mem, $TASK_PLUGIN)"
    return 0
}

start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        return
    fi
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        mungekey -c -k /etc/munge/munge.key 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 2>/dev/null
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
    chmod 400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged
}

stop_pid() {  # stop_pid NAME PIDFILE: SIGTERM to the daemon whose pid the file holds, if it is still that daemon
    local pid
    [ -s "$2" ] || return 0
    pid=$(cat "$2")
    if [ -n "$pid" ] && [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$1" ]; then
        kill "$pid"
        for _ in $(seq 50); do [ -d /proc/"$pid" ] || break; sleep 0.2; done
    fi
    rm -f "$2"
}

running() { [ -s "$2" ] && [ "$(cat /proc/"$(cat "$2")"/comm 2>/dev/null)" = "$1" ]; }

up() {
    need_root
    install_packages
    local changed=0
    write_conf && changed=1
    start_munge
    if [ "$changed" = 1 ]; then
        stop_pid slurmd /run/slurmd.pid
        stop_pid slurmctld /run/slurmctld.pid
    fi
    running slurmctld /run/slurmctld.pid || slurmctld
    running slurmd /run/slurmd.pid || slurmd
    local state=""
    for _ in $(seq 60); do
        state=$(node_state)
        case "$state" in
            idle|mixed|allocated|completing) say "up: node $(hostname -s) is $state"; sinfo; return 0 ;;
            down|drained|draining) scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 1
    done
    die "the node did not become idle within 60 s (state: ${state:-no answer}): see $LOG_DIR/slurmctld.log and $LOG_DIR/slurmd.log"
}

down() {
    need_root
    stop_pid slurmd /run/slurmd.pid
    stop_pid slurmctld /run/slurmctld.pid
    stop_pid munged /run/munge/munged.pid
    say "down"
}

status() {
    command -v sinfo >/dev/null || { say "no Slurm installed (no sinfo)"; exit 1; }
    local state
    state=$(node_state)
    sinfo 2>&1 || true
    case "$state" in
        idle|mixed|allocated|completing) exit 0 ;;
        *) exit 1 ;;
    esac
}

case "${1:-}" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) usage ;;
esac
