#!/usr/bin/env bash
# A real one-node SLURM cluster on localhost, for CI and for trying the SLURM profile.
#
# Usage (as root, Debian/Ubuntu):
#   .ci/slurm-local.sh run -- CMD [ARGS...]  start the cluster, run CMD with SLURM_CONF exported,
#                                           stop the daemons on exit (trap), exit with CMD's status
#   .ci/slurm-local.sh start                 start the cluster and leave it running; prints the
#                                           `export` lines and writes them to $SLURM_LOCAL_DIR/env.sh
#   .ci/slurm-local.sh stop                  stop the daemons a previous `start` started (by PID)
#   source .ci/slurm-local.sh                defines slurm_local_start and slurm_local_stop
#
# Environment:
#   SLURM_LOCAL_DIR   the one folder holding slurm.conf, state, spool, logs and PID files
#                     (default /tmp/slide2expr-slurm)
#   SLURM_LOCAL_PORT  slurmctld port (default 6817; slurmd uses the next one)
#
# What it does: installs `slurmctld slurmd slurm-client munge` with apt-get if missing, writes
# slurm.conf (node `localhost` at 127.0.0.1, partition `debug`, no accounting database, no
# cgroups), starts munged (unless one already answers), `slurmctld -c` and `slurmd -N localhost`,
# waits for the node to be idle. Only the daemons this script started are stopped, by the PIDs in
# their PID files, after checking the PID still runs that program. The measured facts behind
# these settings are in docs/cluster.md ("Testing the profile on a local SLURM").

SLURM_LOCAL_DIR="${SLURM_LOCAL_DIR:-/tmp/slide2expr-slurm}"
SLURM_LOCAL_PORT="${SLURM_LOCAL_PORT:-6817}"
_SL_ETC_CONF=/etc/slurm/slurm.conf

_sl_log() { echo "[slurm-local] $*" >&2; }

_sl_install() {
    local missing=0 exe
    for exe in slurmctld slurmd sbatch squeue munged; do
        command -v "$exe" >/dev/null 2>&1 || [ -x "/usr/sbin/$exe" ] || missing=1
    done
    [ "$missing" = 0 ] && return 0
    _sl_log "installing slurmctld slurmd slurm-client munge with apt-get"
    local apt=(apt-get -y -q -o DPkg::Lock::Timeout=600 install --no-install-recommends
        slurmctld slurmd slurm-client munge)
    if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" >"$SLURM_LOCAL_DIR/apt.log" 2>&1; then
        _sl_log "install failed; running apt-get update and retrying"
        apt-get -q -o DPkg::Lock::Timeout=600 update >>"$SLURM_LOCAL_DIR/apt.log" 2>&1 || true
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" >>"$SLURM_LOCAL_DIR/apt.log" 2>&1 || {
            _sl_log "apt-get install failed; see $SLURM_LOCAL_DIR/apt.log"
            tail -20 "$SLURM_LOCAL_DIR/apt.log" >&2
            return 1
        }
    fi
}

# Wait until FILE holds a PID of a live process (daemons fork and write it a moment later).
_sl_wait_pidfile() {
    local file="$1" i
    for i in $(seq 1 100); do
        if [ -s "$file" ] && kill -0 "$(cat "$file")" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    _sl_log "no live PID in $file after 10 s"
    return 1
}

# Record that this script started the daemon whose PID file is $1 (program name $2).
_sl_own() { echo "$1 $2" >>"$SLURM_LOCAL_DIR/started"; }

_sl_write_conf() {
    local cpus mem
    cpus="$(nproc)"
    # RealMemory above what slurmd finds drains the node: use about 90% of the total.
    mem="$(free -m | awk '/^Mem:/ {print int($2 * 0.9)}')"
    cat >"$SLURM_LOCAL_DIR/slurm.conf" <<EOF
# Written by .ci/slurm-local.sh: one node, localhost, no accounting database, no cgroups.
ClusterName=localci
SlurmctldHost=localhost
SlurmctldPort=${SLURM_LOCAL_PORT}
SlurmdPort=$((SLURM_LOCAL_PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=${SLURM_LOCAL_DIR}/state
SlurmdSpoolDir=${SLURM_LOCAL_DIR}/spool
SlurmctldPidFile=${SLURM_LOCAL_DIR}/slurmctld.pid
SlurmdPidFile=${SLURM_LOCAL_DIR}/slurmd.pid
SlurmctldLogFile=${SLURM_LOCAL_DIR}/log/slurmctld.log
SlurmdLogFile=${SLURM_LOCAL_DIR}/log/slurmd.log
# No systemd, no cgroups in CI containers.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
# Finished jobs (id, state, submit/start/end times) are appended to a text file: a record of
# every job without an accounting database (squeue forgets them after MinJobAge).
JobCompType=jobcomp/filetxt
JobCompLoc=${SLURM_LOCAL_DIR}/log/jobcomp.txt
MpiDefault=none
ReturnToService=2
# Share the node: a job without a memory request gets DefMemPerCPU, not the whole node.
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=500
# squeue-based status checks (no sacct) need finished jobs kept >= 3 x the plugin's initial wait
# and longer than the gap between its polls (up to 180 s).
MinJobAge=600
SchedulerParameters=sched_interval=1
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=localhost NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

_sl_munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

slurm_local_start() {
    if [ "$(id -u)" != 0 ]; then
        _sl_log "must run as root (installs packages and starts daemons)"
        return 1
    fi
    if [ -s "$SLURM_LOCAL_DIR/slurmctld.pid" ] && kill -0 "$(cat "$SLURM_LOCAL_DIR/slurmctld.pid")" 2>/dev/null; then
        _sl_log "a cluster from $SLURM_LOCAL_DIR is already running; run '$0 stop' first"
        return 1
    fi
    # Start clean, but never delete a folder this script did not make.
    if [ -d "$SLURM_LOCAL_DIR" ] && [ ! -e "$SLURM_LOCAL_DIR/.slurm-local" ] &&
        [ -n "$(ls -A "$SLURM_LOCAL_DIR")" ]; then
        _sl_log "$SLURM_LOCAL_DIR exists, is not empty and was not made by this script"
        return 1
    fi
    rm -rf "$SLURM_LOCAL_DIR"
    mkdir -p "$SLURM_LOCAL_DIR"/{state,spool,log}
    touch "$SLURM_LOCAL_DIR/.slurm-local"
    : >"$SLURM_LOCAL_DIR/started"
    local t0=$SECONDS
    _sl_install || return 1
    _sl_write_conf
    export SLURM_CONF="$SLURM_LOCAL_DIR/slurm.conf"
    # Inside a job, the plugin's job step runs a nested `srun` with every SLURM_* variable
    # except the job's identity removed, SLURM_CONF included: that srun reads the default
    # /etc/slurm/slurm.conf. Link it to ours (removed again on stop); never replace a real one.
    if [ -e "$_SL_ETC_CONF" ] || [ -L "$_SL_ETC_CONF" ]; then
        if [ "$(readlink "$_SL_ETC_CONF")" != "$SLURM_CONF" ]; then
            _sl_log "$_SL_ETC_CONF exists and is not ours: this machine already has a SLURM setup"
            return 1
        fi
    else
        mkdir -p "$(dirname "$_SL_ETC_CONF")"
        ln -s "$SLURM_CONF" "$_SL_ETC_CONF"
        echo "$_SL_ETC_CONF" >"$SLURM_LOCAL_DIR/linked"
    fi

    # munge: reuse one that already answers; else start our own as user munge.
    if _sl_munge_ok; then
        _sl_log "munged already running; reusing it"
    else
        [ -s /etc/munge/munge.key ] || {
            _sl_log "/etc/munge/munge.key missing (the munge package creates it)"
            return 1
        }
        install -d -o munge -g munge -m 0755 /run/munge
        rm -f "$SLURM_LOCAL_DIR/munged.pid"
        install -o munge -g munge -m 0644 /dev/null "$SLURM_LOCAL_DIR/munged.log"
        # munged needs to write its PID file: point it at a folder user munge owns.
        install -d -o munge -g munge "$SLURM_LOCAL_DIR/munge"
        runuser -u munge -- /usr/sbin/munged --force \
            --pid-file="$SLURM_LOCAL_DIR/munge/munged.pid" \
            --log-file="$SLURM_LOCAL_DIR/munged.log" || return 1
        _sl_wait_pidfile "$SLURM_LOCAL_DIR/munge/munged.pid" || return 1
        _sl_own "$SLURM_LOCAL_DIR/munge/munged.pid" munged
    fi

    /usr/sbin/slurmctld -c -f "$SLURM_CONF" || return 1
    _sl_wait_pidfile "$SLURM_LOCAL_DIR/slurmctld.pid" || return 1
    _sl_own "$SLURM_LOCAL_DIR/slurmctld.pid" slurmctld

    /usr/sbin/slurmd -N localhost -f "$SLURM_CONF" || return 1
    _sl_wait_pidfile "$SLURM_LOCAL_DIR/slurmd.pid" || return 1
    _sl_own "$SLURM_LOCAL_DIR/slurmd.pid" slurmd

    # Wait for the node to be idle (up to 60 s).
    local i state=""
    for i in $(seq 1 120); do
        state="$(sinfo -h -N -n localhost -o '%T' 2>/dev/null | head -1)"
        [ "$state" = idle ] && break
        sleep 0.5
    done
    if [ "$state" != idle ]; then
        _sl_log "node not idle after 60 s (state: '${state:-none}'); logs in $SLURM_LOCAL_DIR/log"
        tail -5 "$SLURM_LOCAL_DIR"/log/*.log >&2
        return 1
    fi
    echo "export SLURM_CONF=$SLURM_CONF" >"$SLURM_LOCAL_DIR/env.sh"
    _sl_log "cluster up in $((SECONDS - t0)) s: $(sinfo -h -o '%P %D %T %c CPUs %m MB')"
}

slurm_local_stop() {
    local file name pid i
    [ -f "$SLURM_LOCAL_DIR/started" ] || touch "$SLURM_LOCAL_DIR/started" 2>/dev/null || return 0
    # Stop in reverse start order: slurmd, slurmctld, then munged.
    while read -r file name; do
        [ -s "$file" ] || continue
        pid="$(cat "$file")"
        # Kill only if the PID still runs the program we started (PIDs get reused).
        if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
            kill "$pid" 2>/dev/null || true
            for i in $(seq 1 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
            _sl_log "stopped $name (PID $pid)"
        fi
    done < <(tac "$SLURM_LOCAL_DIR/started")
    : >"$SLURM_LOCAL_DIR/started"
    # Remove the /etc/slurm/slurm.conf link if we made it and it still points to our file.
    if [ -f "$SLURM_LOCAL_DIR/linked" ] && [ -L "$_SL_ETC_CONF" ] &&
        [ "$(readlink "$_SL_ETC_CONF")" = "$SLURM_LOCAL_DIR/slurm.conf" ]; then
        rm -f "$_SL_ETC_CONF" "$SLURM_LOCAL_DIR/linked"
    fi
}

# Executed (not sourced): dispatch the subcommand.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -uo pipefail
    case "${1:-}" in
        start)
            slurm_local_start || { slurm_local_stop; exit 1; }
            cat "$SLURM_LOCAL_DIR/env.sh"
            ;;
        stop)
            slurm_local_stop
            ;;
        run)
            shift
            [ "${1:-}" = "--" ] && shift
            [ "$#" -gt 0 ] || { echo "usage: $0 run -- CMD [ARGS...]" >&2; exit 2; }
            trap slurm_local_stop EXIT
            trap 'exit 130' INT TERM
            slurm_local_start || exit 1
            "$@"
            exit $?
            ;;
        *)
            sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
            exit 2
            ;;
    esac
fi
