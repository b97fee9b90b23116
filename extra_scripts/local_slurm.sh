#!/usr/bin/env bash
# A real one-node SLURM cluster on a Debian/Ubuntu workstation (as root), to try `ssl-scale launch`
# before going to a cluster; the SLURM tests use it too.
#
#   extra_scripts/local_slurm.sh install   # apt-get install slurmctld slurmd slurm-client munge
#   extra_scripts/local_slurm.sh start     # munged + slurmctld + slurmd, one node, partition "debug"
#   extra_scripts/local_slurm.sh status    # sinfo
#   extra_scripts/local_slurm.sh stop      # stops exactly the daemons that `start` started
#
# `start` writes /etc/slurm/slurm.conf only when there is none or when it wrote the one there (it never
# touches a real cluster's configuration), and records the PID of every daemon it starts in
# $SSL_SCALE_SLURM_STATE (default /run/ssl_scale_slurm); `stop` ends those PIDs and nothing else.
set -euo pipefail

STATE=${SSL_SCALE_SLURM_STATE:-/run/ssl_scale_slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by ssl_scale extra_scripts/local_slurm.sh"
PARTITION=${SSL_SCALE_SLURM_PARTITION:-debug}

die() { echo "local_slurm.sh: error: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "run as root (the daemons need it)"; }
# every core of the machine: nproc alone answers OMP_NUM_THREADS when that is set
ncpus() { env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc; }
alive() { [ -f "$STATE/$1.pid" ] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

install() {
    need_root
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurmctld slurmd slurm-client munge
}

write_conf() {
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        echo "local_slurm.sh: keeping the existing $CONF (not written by this script)" >&2
        return
    fi
    local host cpus mem
    host=$(hostname)
    cpus=$(ncpus)
    mem=$(( $(awk '/MemAvailable/ {print int($2 / 1024)}' /proc/meminfo) * 8 / 10 ))
    mkdir -p /etc/slurm "$STATE/ctld" "$STATE/slurmd"
    cat > "$CONF" <<EOF
$MARK
ClusterName=ssl_scale_local
SlurmctldHost=$host
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SchedulerType=sched/backfill
# schedule every second, so that a requeued job starts as soon as it may (a test waits for it)
SchedulerParameters=sched_interval=1,bf_interval=1
# a requeued job waits cred_expire seconds before it may start again (SLURM's default: 120)
AuthInfo=cred_expire=5
MinJobAge=60
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start_munge() {
    if munge -n >/dev/null 2>&1 </dev/null; then return; fi  # a munged is already serving
    mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key /run/munge /var/log/munge /var/lib/munge
    chmod 400 /etc/munge/munge.key
    rm -f "$STATE/munged.pid"
    su -s /bin/sh munge -c "munged --force --pid-file=$STATE/munged.pid.tmp" 2>/dev/null \
        || munged --force --pid-file="$STATE/munged.pid.tmp"
    for _ in $(seq 50); do [ -s "$STATE/munged.pid.tmp" ] && break; sleep 0.1; done
    mv "$STATE/munged.pid.tmp" "$STATE/munged.pid"
}

start() {
    need_root
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        || die "slurmctld/slurmd/munged not installed; run: $0 install"
    mkdir -p "$STATE"
    chmod 777 "$STATE" 2>/dev/null || true
    if ! getent hosts "$(hostname)" >/dev/null; then  # slurmctld must resolve its own host name
        echo "local_slurm.sh: adding '127.0.0.1 $(hostname)' to /etc/hosts (the host name did not resolve)" >&2
        echo "127.0.0.1 $(hostname)" >> /etc/hosts
    fi
    write_conf
    start_munge
    alive slurmctld || slurmctld
    alive slurmd || slurmd
    for _ in $(seq 100); do
        if sinfo -h -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
            echo "local SLURM cluster up (partition $PARTITION, $(ncpus) CPUs); state and logs in $STATE"
            return
        fi
        sleep 0.2
    done
    die "the node did not become idle; see $STATE/slurmctld.log and $STATE/slurmd.log"
}

stop() {
    local name pid
    for name in slurmd slurmctld munged; do
        [ -f "$STATE/$name.pid" ] || continue
        pid=$(cat "$STATE/$name.pid")
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
        rm -f "$STATE/$name.pid"
    done
    echo "local SLURM daemons stopped"
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) sinfo ;;
    *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
