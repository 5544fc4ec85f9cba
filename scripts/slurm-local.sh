#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for the tests and for trying
# `come-repro grid --slurm` without a cluster: Debian's slurm-wlm and munge, a munge key,
# munged, slurmctld and slurmd with a slurm.conf naming this host with its CPU count and
# memory. Idempotent: `scripts/slurm-local.sh` (or `start`) installs what is missing, starts
# what is not running and waits until `sinfo` shows the node idle; `stop` ends the daemons
# it started; `status` prints sinfo. Needs root (no systemd is used).
set -euo pipefail
cmd="${1:-start}"
state=/var/lib/come-slurm
conf=/etc/slurm/slurm.conf

stop() {
  for d in slurmd slurmctld munged; do
    if [ -f "$state/$d.pid" ]; then
      kill "$(cat "$state/$d.pid")" 2>/dev/null || true
      rm -f "$state/$d.pid"
    fi
  done
}

install() {
  if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    echo "slurm-local: installing slurm-wlm and munge"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null; }
  fi
}

configure() {
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  mkdir -p "$state" /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
  chmod 0400 /etc/munge/munge.key
  cat > "$conf.new" <<EOF
# Written by come-repro scripts/slurm-local.sh: one node, this host.
ClusterName=come-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MaxArraySize=10000
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
# Tasks that do not ask for memory get a CPU's share instead of the whole node, so
# several array tasks run side by side.
DefMemPerCPU=$(( mem / cpus ))
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  if ! cmp -s "$conf.new" "$conf"; then
    mv "$conf.new" "$conf"
    stop
  else
    rm -f "$conf.new"
  fi
}

running() {
  [ -f "$state/$1.pid" ] && kill -0 "$(cat "$state/$1.pid")" 2>/dev/null
}

start() {
  install
  configure
  if ! running munged; then
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid 2>/dev/null \
      || /usr/sbin/munged --force --pid-file=/run/munge/munged.pid
    sleep 1
    cp /run/munge/munged.pid "$state/munged.pid"
  fi
  running slurmctld || slurmctld -c 2>/dev/null || slurmctld
  running slurmd || slurmd
  for _ in $(seq 1 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      sinfo
      return 0
    fi
    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  echo "slurm-local: the node did not become idle; see /var/log/slurm/*.log" >&2
  sinfo >&2 || true
  return 1
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) sinfo ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
