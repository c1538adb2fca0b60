#!/usr/bin/env bash
# A one-node Slurm cluster in a folder, for the test suite (tests/slurm.rs):
#   scripts/slurm-cluster.sh start DIR   starts munged, slurmctld and slurmd with everything
#                                        (config, key, state, spool, logs) under DIR; prints
#                                        `export SLURM_CONF=DIR/slurm.conf` for the clients
#   scripts/slurm-cluster.sh stop DIR    stops them by the pids they wrote under DIR
# Needs root and Debian's slurm-wlm and munge packages (.ci/run installs them). Every failure
# names what failed and shows the log that says why.
set -euo pipefail

cmd=${1:?usage: slurm-cluster.sh start|stop DIR}
dir=${2:?usage: slurm-cluster.sh start|stop DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

fail() {
    echo "slurm-cluster: $1" >&2
    for log in "$dir"/log/*.log; do
        [ -f "$log" ] && { echo "--- $log" >&2; tail -n 20 "$log" >&2; }
    done
    exit 1
}

stop() {
    for pidfile in "$dir"/slurmd.pid "$dir"/slurmctld.pid "$dir"/munge/munged.pid; do
        [ -f "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$pidfile"
    done
}

if [ "$cmd" = stop ]; then
    stop
    exit 0
fi
[ "$cmd" = start ] || fail "unknown command $cmd (start or stop)"

[ "$(id -u)" = 0 ] || fail "must run as root (slurmd runs jobs as their users)"
for tool in munged slurmctld slurmd sbatch squeue scontrol; do
    command -v "$tool" >/dev/null || fail "$tool not found: install Debian's slurm-wlm and munge (apt-get install slurm-wlm munge)"
done

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
# Ports of our own, so a cluster already on this machine is left alone.
ctld_port=${GPTLAB_SLURMCTLD_PORT:-16817}
slurmd_port=${GPTLAB_SLURMD_PORT:-16818}

stop # whatever an earlier start in this folder left
mkdir -p "$dir"/munge "$dir"/state "$dir"/spool "$dir"/log
chmod 700 "$dir"/munge
dd if=/dev/urandom of="$dir"/munge/munge.key bs=1 count=1024 status=none
chmod 400 "$dir"/munge/munge.key
munged --force --key-file="$dir"/munge/munge.key --socket="$dir"/munge/munge.socket.2 \
    --pid-file="$dir"/munge/munged.pid --log-file="$dir"/log/munged.log \
    --seed-file="$dir"/munge/munged.seed || fail "munged did not start"

cat > "$dir"/slurm.conf <<CONF
ClusterName=gptlabtest
SlurmctldHost=$host
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
CredType=cred/munge
# cred_expire: a requeued job waits this long before it may start again (default 120 s).
AuthInfo=socket=$dir/munge/munge.socket.2,cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=600
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$dir"/slurm.conf

slurmctld -f "$SLURM_CONF" -i || fail "slurmctld did not start"
slurmd -f "$SLURM_CONF" || fail "slurmd did not start"
for _ in $(seq 100); do
    state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
    case "$state" in
        idle*|mixed*|allocated*) echo "export SLURM_CONF=$SLURM_CONF"; exit 0 ;;
    esac
    sleep 0.2
done
fail "the node $host did not come up (state: ${state:-none})"
