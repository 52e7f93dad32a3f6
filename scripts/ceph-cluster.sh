#!/usr/bin/env bash
# Start and stop a throwaway single-node Ceph cluster for rbd-wasm's tests:
# one monitor (a), one manager (x) and one OSD (0) on 127.0.0.1,
# with cephx on, pools `rbd` and `rbd2` (the second one for cross-pool
# clone/copy tests). Everything the cluster writes lives under one directory,
# so stopping it is "kill our pids, rm -rf DIR".
#
# Usage:
#   scripts/ceph-cluster.sh start  [DIR]   create a fresh cluster, wait for active+clean
#   scripts/ceph-cluster.sh stop   [DIR]   kill exactly the daemons started in DIR, remove DIR
#   scripts/ceph-cluster.sh status [DIR]   daemon pids and `ceph -s`
#   scripts/ceph-cluster.sh env    [DIR]   print `export CEPH_CONF=DIR/ceph.conf`
#   scripts/ceph-cluster.sh revive NAME [DIR]  start daemon NAME (mon.a or osd.0) again
#                                          after it was killed (the fault tests)
#
# DIR defaults to $RBD_WASM_CEPH_DIR or /tmp/rbd-wasm-ceph.
# Environment:
#   RBD_WASM_CEPH_PORT            monitor port (msgr v1), default 6789
#   RBD_WASM_CEPH_OSD_STORE       memstore (default: RAM, lost when the OSD stops) or
#                                 bluestore (a sparse file under DIR: survives an OSD
#                                 killed and started again, for the fault tests)
#   RBD_WASM_CEPH_MEMSTORE_BYTES  memstore capacity, default 8 GiB (RAM, used as written)
#   RBD_WASM_CEPH_BLUESTORE_BYTES bluestore's file size, default 16 GiB (sparse)
#   RBD_WASM_CEPH_TIMEOUT         seconds to wait for active+clean, default 60
#   RBD_WASM_CEPH_RGW_PORT        also start Ceph's S3 gateway (radosgw, beast) on
#                                 127.0.0.1:PORT, with a user and a bucket whose
#                                 endpoint and keys go to DIR/s3.env (sourceable:
#                                 RBD_WASM_S3_ENDPOINT, _ACCESS_KEY, _SECRET_KEY,
#                                 _BUCKET, _REGION); unset or empty: no gateway
#   RBD_WASM_CEPH_RGW_TLS_PORT    with RBD_WASM_CEPH_RGW_PORT: the gateway also answers
#                                 https on 127.0.0.1:PORT, with a certificate for
#                                 localhost and 127.0.0.1 from a CA made for this
#                                 cluster (DIR/rgw/tls/ca.crt); s3.env gets
#                                 RBD_WASM_S3_TLS_ENDPOINT (https://localhost:PORT)
#                                 and RBD_WASM_S3_CA_FILE
#
# Needs the packages from scripts/install-ceph.sh.
set -euo pipefail

readonly DEFAULT_DIR=/tmp/rbd-wasm-ceph
# A file that marks a directory as ours: `start` and `stop` remove DIR
# recursively, and refuse to do so for a non-empty directory without it.
readonly MARKER=.rbd-wasm-ceph-cluster

die() {
    echo "ceph-cluster: error: $*" >&2
    exit 1
}

log() {
    echo "ceph-cluster: $*" >&2
}

usage() {
    sed -n '8,14p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# Resolve DIR to an absolute path: the conf file is read by daemons and by
# clients that may run in another working directory.
resolve_dir() {
    local dir=${1:-${RBD_WASM_CEPH_DIR:-$DEFAULT_DIR}}
    [[ -n "$dir" ]] || die "empty DIR"
    case "$dir" in
        /*) ;;
        *) dir="$PWD/$dir" ;;
    esac
    # Strip trailing slashes (but keep "/" itself so the guard below sees it).
    while [[ "$dir" == */ && "$dir" != / ]]; do dir=${dir%/}; done
    [[ "$dir" != / ]] || die "refusing to use / as the cluster directory"
    printf '%s\n' "$dir"
}

# Run a ceph CLI command against the cluster in $DIR. `timeout` guards
# against a CLI that hangs on a dead monitor; --connect-timeout makes it give
# up on connecting first with a clearer message.
cephc() {
    timeout 60 ceph -c "$DIR/ceph.conf" --connect-timeout 15 "$@"
}

rbdc() {
    timeout 60 rbd -c "$DIR/ceph.conf" "$@"
}

# Pids recorded by `start`, one "name pid" per line. The daemons' own pid
# files are removed when a daemon exits, so `start` copies them here.
pids_file() { printf '%s\n' "$DIR/daemons.pids"; }

# True if PID is alive and is a ceph daemon started with this DIR's conf.
# Guards against killing an unrelated process that reused a recorded pid.
is_our_daemon() {
    local pid=$1 cmdline
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ ("$cmdline" == *ceph-* || "$cmdline" == radosgw*) && "$cmdline" == *"$DIR/ceph.conf"* ]]
}

# Print "name pid" for every recorded daemon (from daemons.pids, falling back
# to the pid files for a start that was interrupted before recording).
recorded_pids() {
    local f name
    if [[ -f "$(pids_file)" ]]; then
        cat "$(pids_file)"
    fi
    for f in "$DIR"/run/*.pid; do
        [[ -f "$f" ]] || continue
        name=$(basename "$f" .pid)
        printf '%s %s\n' "$name" "$(tr -d '[:space:]' <"$f")"
    done
}

print_log_tails() {
    local f
    for f in "$DIR"/log/*.log; do
        [[ -f "$f" ]] || continue
        echo "----- tail of $f -----" >&2
        tail -n 30 "$f" >&2 || true
    done
}

# Run a setup step quietly; on failure show its output and the daemon logs.
quiet() {
    local out
    out=$("$@" 2>&1) || fail_start "'$*' failed: $out"
}

fail_start() {
    echo "ceph-cluster: error: $*" >&2
    print_log_tails
    echo "ceph-cluster: the half-started cluster is left running for inspection;" \
        "run '$0 stop $DIR' to clean up" >&2
    exit 1
}

# Wait for a daemon's pid file (it appears once the daemon has forked into the
# background) and record the pid.
record_pid() {
    local name=$1 deadline=$((SECONDS + 30)) pidf="$DIR/run/$1.pid" pid
    while [[ ! -s "$pidf" ]]; do
        ((SECONDS < deadline)) || fail_start "$name did not write $pidf"
        sleep 0.1
    done
    pid=$(tr -d '[:space:]' <"$pidf")
    printf '%s %s\n' "$name" "$pid" >>"$(pids_file)"
}

write_conf() {
    local fsid=$1 port=$2 store=$3 bytes=$4
    cat >"$DIR/ceph.conf" <<EOF
# Throwaway single-node cluster written by scripts/ceph-cluster.sh.
[global]
fsid = $fsid
mon host = v1:127.0.0.1:$port
mon initial members = a
# msgr v1 only: one port, and what the verified setup used.
ms bind msgr2 = false
mon warn on msgr2 not enabled = false
# cephx on, as a real cluster has it, so clients exercise authentication.
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
mon warn on insecure global id reclaim = false
mon warn on insecure global id reclaim allowed = false
# One OSD: size 1 pools, replicas chosen across OSDs rather than hosts.
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
osd pool default pg num = 8
osd pool default pgp num = 8
# Fixed PG counts: the autoscaler would only add work on 2 cores.
osd pool default pg autoscale mode = off
mon allow pool delete = true
$(store_conf "$store" "$bytes")
# The temp filesystem may be fuller than a monitor likes; never stop for it.
mon data avail warn = 1
mon data avail crit = 0
# No restful/nfs manager modules: not needed, and they cost start-up time.
# (Read by the monitor when it creates the cluster, hence [global].)
mgr initial modules = iostat
# One monitor has no peers to batch proposals with: commit at once. (Snapshot create and
# remove wait for a monitor commit: about 1 s each at the default interval of 1 s.)
paxos propose interval = 0.05
paxos min wait = 0.01
# Report PG states every second so "active+clean" is seen quickly.
mgr stats period = 1
# Everything under DIR.
run dir = $DIR/run
crash dir = $DIR/crash
mon cluster log file = $DIR/log/ceph.log
mon data = $DIR/mon/\$cluster-\$id
osd data = $DIR/osd/\$cluster-\$id
mgr data = $DIR/mgr/\$cluster-\$id

[mon]
keyring = \$mon_data/keyring
pid file = $DIR/run/\$name.pid
admin socket = $DIR/run/\$cluster-\$name.asok
log file = $DIR/log/\$cluster-\$name.log

[osd]
keyring = \$osd_data/keyring
pid file = $DIR/run/\$name.pid
admin socket = $DIR/run/\$cluster-\$name.asok
log file = $DIR/log/\$cluster-\$name.log
# Few op shards/threads: the machine has 2 cores shared with compilers.
osd op num shards = 2
osd op num threads per shard = 1

[mgr]
keyring = \$mgr_data/keyring
pid file = $DIR/run/\$name.pid
admin socket = $DIR/run/\$cluster-\$name.asok
log file = $DIR/log/\$cluster-\$name.log

[client.rgw.x]
# The S3 gateway (RBD_WASM_CEPH_RGW_PORT): its own key, log and pid file under DIR.
keyring = $DIR/rgw/keyring
rgw data = $DIR/rgw
pid file = $DIR/run/\$name.pid
log file = $DIR/log/\$cluster-\$name.log
log to file = true
admin socket = $DIR/run/\$cluster-\$name.asok
rgw frontends = beast endpoint=127.0.0.1:${rgw_port:-7480}${rgw_tls_port:+ ssl_endpoint=127.0.0.1:$rgw_tls_port ssl_certificate=$DIR/rgw/tls/server.crt ssl_private_key=$DIR/rgw/tls/server.key}
# Two cores: few threads.
rgw thread pool size = 16
rgw enable usage log = false

[client]
# client.admin's key, so \`rbd -c DIR/ceph.conf ...\` and
# rados.Rados(conffile=DIR/ceph.conf) work without further arguments.
keyring = $DIR/keyring
# Clients (CLI, python, the Rust tests) must not write to /var/log/ceph or
# /var/run/ceph; many of them run at once, so no shared log file either.
log to file = false
admin socket = $DIR/run/\$cluster-\$name.\$pid.\$cctid.asok
# Fail in seconds, not 5 minutes, when the cluster is not there.
client mount timeout = 30
EOF
}

# The OSD's object store, for [global].
store_conf() {
    local store=$1 bytes=$2
    case "$store" in
        memstore)
            cat <<EOF
# Data in RAM; lost when the OSD stops, which a throwaway cluster wants.
osd objectstore = memstore
memstore device bytes = $bytes
EOF
            ;;
        bluestore)
            cat <<EOF
# Data in a sparse file under DIR: it survives the OSD being killed and started
# again (the fault tests). Small caches: the machine runs the test cluster too.
osd objectstore = bluestore
bluestore block create = true
bluestore block size = $bytes
bluestore block db create = false
bluestore block wal create = false
osd memory target = 939524096
bluestore cache autotune = false
bluestore cache size = 134217728
EOF
            ;;
    esac
}

cmd_start() {
    local port=${RBD_WASM_CEPH_PORT:-6789}
    # Read by write_conf too.
    local rgw_port=${RBD_WASM_CEPH_RGW_PORT:-}
    local rgw_tls_port=${RBD_WASM_CEPH_RGW_TLS_PORT:-}
    local store=${RBD_WASM_CEPH_OSD_STORE:-memstore}
    local bytes
    case "$store" in
        memstore) bytes=${RBD_WASM_CEPH_MEMSTORE_BYTES:-$((8 * 1024 * 1024 * 1024))} ;;
        bluestore) bytes=${RBD_WASM_CEPH_BLUESTORE_BYTES:-$((16 * 1024 * 1024 * 1024))} ;;
        *) die "RBD_WASM_CEPH_OSD_STORE must be memstore or bluestore, not '$store'" ;;
    esac
    local wait_s=${RBD_WASM_CEPH_TIMEOUT:-60}
    local t0=$SECONDS fsid osd_uuid osd_id

    [[ "$port" =~ ^[0-9]+$ ]] || die "RBD_WASM_CEPH_PORT must be a number"
    [[ -z "$rgw_port" || "$rgw_port" =~ ^[0-9]+$ ]] || die "RBD_WASM_CEPH_RGW_PORT must be a number"
    [[ -z "$rgw_tls_port" || ( "$rgw_tls_port" =~ ^[0-9]+$ && -n "$rgw_port" ) ]] ||
        die "RBD_WASM_CEPH_RGW_TLS_PORT must be a number, and needs RBD_WASM_CEPH_RGW_PORT"
    [[ "$bytes" =~ ^[0-9]+$ ]] || die "the store size must be a number of bytes"
    for tool in ceph ceph-mon ceph-osd ceph-mgr ceph-authtool monmaptool rbd uuidgen; do
        command -v "$tool" >/dev/null 2>&1 ||
            die "$tool not found; run scripts/install-ceph.sh first"
    done

    # A fresh cluster every time: refuse if one is still running here, and
    # only wipe a directory that is ours (or empty).
    if [[ -e "$DIR" ]]; then
        local name pid
        while read -r name pid; do
            if is_our_daemon "$pid"; then
                die "$name (pid $pid) is still running in $DIR; run '$0 stop $DIR' first"
            fi
        done < <(recorded_pids)
        if [[ ! -e "$DIR/$MARKER" && -n "$(ls -A "$DIR")" ]]; then
            die "$DIR exists, is not empty and is not a cluster directory; refusing to remove it"
        fi
        rm -rf "$DIR"
    fi
    # Fail fast on a taken port: ceph-mon would retry binding for 10 s and a
    # client might meanwhile talk to whatever listens there.
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        die "127.0.0.1:$port is in use (another cluster?); set RBD_WASM_CEPH_PORT"
    fi
    mkdir -p "$DIR"/{run,log,crash,mon/ceph-a,osd/ceph-0,mgr/ceph-x}
    touch "$DIR/$MARKER"

    fsid=$(uuidgen)
    write_conf "$fsid" "$port" "$store" "$bytes"

    # Keys: mon. for the monitor itself, client.admin for every client. Both
    # go into the monitor's initial keyring; client.admin's alone into
    # DIR/keyring, which clients read.
    ceph-authtool --create-keyring "$DIR/mon.keyring" --gen-key -n mon. \
        --cap mon 'allow *' >/dev/null
    ceph-authtool --create-keyring "$DIR/keyring" --gen-key -n client.admin \
        --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' \
        --cap mgr 'allow *' >/dev/null
    ceph-authtool "$DIR/mon.keyring" --import-keyring "$DIR/keyring" >/dev/null

    # --addv with an explicit v1 address: a plain --add picks msgr v2 for any
    # port but 6789, which the v1-only daemons then cannot reach.
    monmaptool --create --fsid "$fsid" --addv a "[v1:127.0.0.1:$port]" "$DIR/monmap" >/dev/null
    quiet ceph-mon -c "$DIR/ceph.conf" --mkfs -i a --monmap "$DIR/monmap" \
        --keyring "$DIR/mon.keyring"
    # Daemons fork into the background; what they print before that goes to
    # startup.log (shown with the other logs on failure).
    ceph-mon -c "$DIR/ceph.conf" -i a 2>>"$DIR/log/startup.log" ||
        fail_start "ceph-mon failed to start (port $port in use?)"
    record_pid mon.a

    # Wait for the monitor to answer (it forms a quorum of one on its own).
    local deadline=$((SECONDS + wait_s))
    until cephc mon stat >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail_start "monitor did not answer on 127.0.0.1:$port"
        is_our_daemon "$(tr -d '[:space:]' <"$DIR/run/mon.a.pid" 2>/dev/null || true)" ||
            fail_start "ceph-mon exited (port $port in use?)"
        sleep 0.5
    done

    # Manager first: its Python modules take the longest to load, so it
    # starts while the OSD is being made.
    quiet cephc auth get-or-create mgr.x mon 'allow profile mgr' osd 'allow *' mds 'allow *' \
        -o "$DIR/mgr/ceph-x/keyring"
    ceph-mgr -c "$DIR/ceph.conf" -i x 2>>"$DIR/log/startup.log" ||
        fail_start "ceph-mgr failed to start"
    record_pid mgr.x

    osd_uuid=$(uuidgen)
    osd_id=$(cephc osd create "$osd_uuid" 2>>"$DIR/log/startup.log") ||
        fail_start "ceph osd create failed"
    [[ "$osd_id" == 0 ]] || fail_start "expected OSD id 0, got '$osd_id'"
    quiet cephc auth get-or-create osd.0 mon 'allow profile osd' mgr 'allow profile osd' \
        osd 'allow *' -o "$DIR/osd/ceph-0/keyring"
    quiet ceph-osd -c "$DIR/ceph.conf" -i 0 --mkfs --osd-uuid "$osd_uuid"
    ceph-osd -c "$DIR/ceph.conf" -i 0 2>>"$DIR/log/startup.log" ||
        fail_start "ceph-osd failed to start"
    record_pid osd.0

    # Pools can be created before the OSD is up; their PGs peer once it is.
    quiet cephc osd pool create rbd 8 8
    quiet cephc osd pool create rbd2 8 8

    # `rbd pool init` writes to the pool, so it needs the OSD up; it blocks
    # until then (bounded by rbdc's timeout).
    quiet rbdc pool init rbd
    quiet rbdc pool init rbd2

    wait_active_clean "$deadline"
    if [[ -n "$rgw_port" ]]; then
        start_rgw "$rgw_port" "$rgw_tls_port"
    fi

    log "cluster up in $((SECONDS - t0)) s (fsid $fsid, mon 127.0.0.1:$port)"
    log "use: export CEPH_CONF=$DIR/ceph.conf   stop: $0 stop $DIR"
    echo "$DIR/ceph.conf"
}

# Start the S3 gateway on 127.0.0.1:PORT, make a user with fresh keys and a bucket,
# wait until it answers, and write DIR/s3.env.
start_rgw() {
    local port=$1 tls_port=$2 deadline access secret bucket=rbd-wasm-test code
    command -v radosgw >/dev/null 2>&1 || fail_start "radosgw not found; run scripts/install-ceph.sh first"
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        fail_start "127.0.0.1:$port is in use; set RBD_WASM_CEPH_RGW_PORT"
    fi
    mkdir -p "$DIR/rgw"
    [[ -z "$tls_port" ]] || make_tls_certificates "$DIR/rgw/tls"
    quiet cephc auth get-or-create client.rgw.x mon 'allow rw' osd 'allow rwx' -o "$DIR/rgw/keyring"
    radosgw -c "$DIR/ceph.conf" -n client.rgw.x 2>>"$DIR/log/startup.log" ||
        fail_start "radosgw failed to start"
    record_pid client.rgw.x
    # Its first start creates its pools; until then it does not answer.
    deadline=$((SECONDS + 120))
    until code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/") && [[ "$code" == 200 ]]; do
        ((SECONDS < deadline)) || fail_start "radosgw did not answer on 127.0.0.1:$port (last: ${code:-none})"
        sleep 0.5
    done
    access=$(head -c 10 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr a-f A-F)
    secret=$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')
    quiet radosgw-admin -c "$DIR/ceph.conf" user create --uid=rbd-wasm --display-name=rbd-wasm \
        --access-key="$access" --secret-key="$secret"
    # The bucket, through the S3 API itself (SigV4, as any client signs; radosgw wants
    # the payload's hash signed too, which curl 7.88 signs only if it is given).
    local empty=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
    code=$(curl -s -o "$DIR/log/rgw-bucket.out" -w '%{http_code}' -X PUT -H "x-amz-content-sha256: $empty" \
        --aws-sigv4 "aws:amz:default:s3" --user "$access:$secret" "http://127.0.0.1:$port/$bucket") || code=none
    [[ "$code" == 200 ]] || fail_start "creating bucket $bucket answered $code: $(cat "$DIR/log/rgw-bucket.out" 2>/dev/null)"
    if [[ -n "$tls_port" ]]; then
        code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$DIR/rgw/tls/ca.crt" "https://localhost:$tls_port/") || code=none
        [[ "$code" == 200 ]] || fail_start "radosgw did not answer https on localhost:$tls_port (last: $code)"
    fi
    (
        umask 077
        printf '%s\n' "RBD_WASM_S3_ENDPOINT=http://127.0.0.1:$port" "RBD_WASM_S3_ACCESS_KEY=$access" \
            "RBD_WASM_S3_SECRET_KEY=$secret" "RBD_WASM_S3_BUCKET=$bucket" "RBD_WASM_S3_REGION=default" >"$DIR/s3.env"
        [[ -z "$tls_port" ]] ||
            printf '%s\n' "RBD_WASM_S3_TLS_ENDPOINT=https://localhost:$tls_port" "RBD_WASM_S3_CA_FILE=$DIR/rgw/tls/ca.crt" >>"$DIR/s3.env"
    )
    log "S3 gateway on http://127.0.0.1:$port, bucket $bucket (endpoint and keys: $DIR/s3.env)"
}

# A CA made for this cluster alone, and the gateway's certificate from it, for localhost
# and 127.0.0.1 (what a private gateway has; the tests trust the CA by a grant's ca_file).
make_tls_certificates() {
    local dir=$1
    command -v openssl >/dev/null 2>&1 || fail_start "openssl not found; run scripts/install-ceph.sh first"
    mkdir -p "$dir"
    quiet openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj "/CN=rbd-wasm test CA" \
        -keyout "$dir/ca.key" -out "$dir/ca.crt"
    quiet openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$dir/server.key" -out "$dir/server.csr"
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
        "keyUsage=digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >"$dir/server.ext"
    quiet openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
        -days 7 -extfile "$dir/server.ext" -out "$dir/server.crt"
}

# Wait until every PG reported by the manager is active+clean. `ceph pg stat`
# prints e.g. "17 pgs: 17 active+clean; 0 B data, ...": the total must equal
# the active+clean count, and the pools' 16 PGs must be among them.
wait_active_clean() {
    local deadline=$1 stat=""
    while :; do
        stat=$(cephc pg stat 2>/dev/null || true)
        if [[ "$stat" =~ ^([0-9]+)\ pgs:\ ([0-9]+)\ active\+clean\; ]] &&
            [[ "${BASH_REMATCH[1]}" == "${BASH_REMATCH[2]}" ]] &&
            ((BASH_REMATCH[1] >= 16)); then
            return 0
        fi
        ((SECONDS < deadline)) ||
            fail_start "PGs not active+clean in time; last 'ceph pg stat': ${stat:-<no answer>}"
        sleep 0.5
    done
}

cmd_stop() {
    local name pid killed=() alive
    if [[ ! -e "$DIR" ]]; then
        log "$DIR does not exist; nothing to stop"
        return 0
    fi
    [[ -e "$DIR/$MARKER" ]] || die "$DIR is not a cluster directory (no $MARKER); not touching it"

    # The OSD gets SIGKILL at once: on SIGTERM a memstore OSD would first save
    # its whole in-RAM store (up to the memstore size) to DIR, which we are
    # about to delete (a bluestore one has nothing to keep either). Monitor
    # and manager get SIGTERM, SIGKILL after 10 s.
    while read -r name pid; do
        is_our_daemon "$pid" || continue
        case "$name" in
            # radosgw too: it has nothing to keep, and takes more than 10 s over SIGTERM.
            osd.* | client.rgw.*) kill -KILL "$pid" 2>/dev/null || true ;;
            *) kill -TERM "$pid" 2>/dev/null || true ;;
        esac
        killed+=("$pid")
    done < <(recorded_pids | sort -u)

    local deadline=$((SECONDS + 10)) signalled_kill=0
    while :; do
        alive=()
        for pid in "${killed[@]}"; do
            if is_our_daemon "$pid"; then alive+=("$pid"); fi
        done
        ((${#alive[@]} > 0)) || break
        if ((SECONDS >= deadline && !signalled_kill)); then
            log "sending SIGKILL to ${alive[*]}"
            kill -KILL "${alive[@]}" 2>/dev/null || true
            signalled_kill=1
            deadline=$((SECONDS + 10))
        elif ((SECONDS >= deadline)); then
            die "processes ${alive[*]} survived SIGKILL"
        fi
        sleep 0.1
    done
    rm -rf "$DIR"
    log "stopped ${#killed[@]} daemon(s), removed $DIR"
}

# Start a daemon of this cluster again after it was killed (the fault tests
# kill the OSD or the monitor with SIGKILL mid-job). Its stale pid file is
# removed first, and its line in daemons.pids replaced by the new pid.
cmd_revive() {
    local name=$1 n pid
    [[ -f "$DIR/ceph.conf" && -e "$DIR/$MARKER" ]] || die "no cluster in $DIR"
    while read -r n pid; do
        [[ "$n" == "$name" ]] || continue
        if is_our_daemon "$pid"; then die "$name (pid $pid) is still running"; fi
    done < <(recorded_pids)
    rm -f "$DIR/run/$name.pid"
    case "$name" in
        mon.a) ceph-mon -c "$DIR/ceph.conf" -i a 2>>"$DIR/log/startup.log" ||
            fail_start "ceph-mon failed to start again" ;;
        osd.0) ceph-osd -c "$DIR/ceph.conf" -i 0 2>>"$DIR/log/startup.log" ||
            fail_start "ceph-osd failed to start again" ;;
        *) die "can revive mon.a or osd.0, not '$name'" ;;
    esac
    if [[ -f "$(pids_file)" ]]; then
        grep -v "^$name " "$(pids_file)" >"$(pids_file).new" || true
        mv "$(pids_file).new" "$(pids_file)"
    fi
    record_pid "$name"
    log "$name started again (pid $(tr -d '[:space:]' <"$DIR/run/$name.pid"))"
}

cmd_status() {
    local name pid rc=0
    [[ -f "$DIR/ceph.conf" ]] || die "no cluster in $DIR"
    while read -r name pid; do
        if is_our_daemon "$pid"; then
            echo "$name: running (pid $pid)"
        else
            echo "$name: not running (recorded pid $pid)"
            rc=1
        fi
    done < <(recorded_pids | sort -u)
    cephc -s || rc=1
    return "$rc"
}

main() {
    (($# >= 1)) || usage
    local cmd=$1 daemon=""
    shift
    if [[ "$cmd" == revive ]]; then
        (($# >= 1)) || usage
        daemon=$1
        shift
    fi
    (($# <= 1)) || usage
    DIR=$(resolve_dir "${1:-}")
    readonly DIR
    case "$cmd" in
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        env) echo "export CEPH_CONF=$DIR/ceph.conf" ;;
        revive) cmd_revive "$daemon" ;;
        -h | --help | help) usage ;;
        *) usage ;;
    esac
}

main "$@"
