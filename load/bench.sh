#!/usr/bin/env bash
# Side-by-side SIP signalling benchmark: the same SIPp load, every call with an SDP offer in
# the INVITE and an answer in the 200, against
#   sipp                SIPp uac -> SIPp uas directly (reference: the load generator's ceiling)
#   kamailio-dialog     Kamailio 5.6 stateful proxy + dialog: the peer of trunkline (media off)
#   kamailio-rtpengine  Kamailio + dialog + rtpengine 10.5 userspace over ng: the peer of
#                       trunkline-media (every call's media anchored)
#   trunkline           the trunkline node (B2BUA) with [media] enabled = false
#   trunkline-media     the trunkline node in its default configuration: media anchored
#   kamailio            Kamailio + dialog + topos in redis (optional; not in the default set)
#   trunkline-watch10   trunkline (media off) with 10 `trunkctl calls watch` streaming every
#                       call event from its admin API (optional)
#   trunkline-listcalls trunkline (media off) holding 10 000 established calls while a gRPC
#                       client polls ListCalls (a 500-call page) once a second (optional)
#   trunkline-hold      trunkline (media off) standalone, every call held CLUSTER_HOLD_MS
#                       (1 s) before its BYE: the like-for-like baseline of trunkline-cluster
#                       (optional)
#   trunkline-auth      trunkline (media off); the caller is no access network but a trunk's
#                       digest user: every call is challenged (407) and proves it (MD5: Debian's
#                       SIPp 3.6 answers nothing else) (optional)
#   kamailio-auth       kamailio-dialog challenging every INVITE the same way (auth module)
#                       (optional)
#   trunkline-tcp       trunkline (media off) with SIP over TCP on both legs: one connection
#                       from the caller, one to the callee (optional)
#   trunkline-tls       the same over TLS on both legs; Debian's SIPp has no TLS, so stunnel
#                       (Debian stunnel4) carries each SIPp's TCP connection over TLS to and from
#                       the node; its CPU is not the node's and is not counted (optional)
#   trunkline-cluster   the same node in cluster mode with replication on: its own etcd and
#                       a buddy node that holds every settled call's state; calls held
#                       CLUSTER_HOLD_MS so that each one lives past a replication tick (optional)
# one after the other in one run, on loopback.  See load/README.md.
#
#   load/bench.sh [--quick] [--systems LIST]
#   load/bench.sh --profile [--systems trunkline-media]     (load/profile.sh does this)
#
# Every phase starts a fresh system under test and a fresh SIPp uas, runs one
# bounded SIPp uac, and stops both again.  All children are stopped by PID on
# exit, error, Ctrl-C or TERM.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
LIB="$HERE/benchlib.py"
SCEN="$HERE/scenarios"

usage() {
	sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'
	cat <<'EOF'
Options:
  --quick            smoke run: 3 s steps, one bisection, 1000 held calls (~2-3 min per system)
  --systems LIST     comma-separated subset of
                     sipp,kamailio-dialog,kamailio-rtpengine,trunkline,trunkline-media,kamailio,
                     trunkline-watch10,trunkline-listcalls,trunkline-hold,trunkline-cluster,
                     trunkline-auth,kamailio-auth
                     (default: all but kamailio, whose topos row needs redis, the two
                     admin API rows: --systems trunkline,trunkline-watch10,trunkline-listcalls
                     compares them with the idle API, and the two cluster rows:
                     --systems trunkline,trunkline-hold,trunkline-cluster; the auth rows:
                     --systems trunkline,trunkline-auth,kamailio-auth)
  --profile          no rate search: run each system (default: trunkline-media) at PROFILE_RATE
                     for PROFILE_SECS under `perf record -g` and write `perf report --no-children`
                     to load/out/<ts>/<system>/profile/
  -h, --help         this text
Environment (defaults full / quick):
  TRUNKLINE_BIN      use this binary instead of `cargo build --release --bin trunkline`
  TRUNKCTL_BIN       likewise for trunkctl (the watchers of trunkline-watch10)
  WATCHERS           watch streams of trunkline-watch10 (10)
  LIST_HELD_CALLS, LIST_HELD_RATE   calls trunkline-listcalls holds while ListCalls is polled,
                     and the rate they are placed at (10000, 1000)
  GRPC_PYTHON        a python3 with grpcio and grpcio-reflection (the ListCalls poller;
                     default: target/grpc-venv/bin/python3, which tests/run.sh makes)
  ROUNDS             rounds of the rate search and the fixed-rate run (3 / 1): round r measures
                     every system once, in order, into load/out/<ts>/round-r/, so that the
                     host's slow spells fall on all rows alike; the report gives each row's
                     median and every round's figure (the memory run is made in round 1 only)
  STEP_SECS          length of one rate-search step (10 / 3)
  STEP_WARMUP_CALLS  calls placed on each step's freshly started system before the step is
                     measured, for at most 3 s (3000 / 0; 0: none): a sustained rate is a
                     running system's, not one of its first second (trunkline binds a socket
                     for each media port the first time the port is used: 3000 calls take
                     every pair of the default range once)
  STEP_WARMUP_RATE   their rate, or the step's own if lower (1500)
  BISECT             bisection steps after the doubling phase (3 / 1)
  SEARCH_START       first offered rate for the Kamailio and trunkline rows (100 / 100)
  SIPP_SEARCH_START  first offered rate for the SIPp-direct reference (1000 / 1000)
  SEARCH_MAX         never offer more than this (64000)
  FIXED_RATE, FIXED_SECS   fixed-rate run for latency and CPU (200, 20 / 100, 5)
  FIXED_WARMUP_SECS  calls at FIXED_RATE before the fixed-rate run is measured, on the same
                     system (15 / 0): CPU per call of a node that has been running (allocator
                     pages in use, media ports cycled once and their sockets kept for reuse),
                     not of a process in its first seconds
  HOLD_CALLS, HOLD_RATE    held calls for memory and their offered rate (10000, 200 / 1000, 200)
  MEDIA_HOLD_CALLS   held calls of the media rows (HOLD_CALLS, at most 2000: a call takes four
                     media ports and the default range holds 10000)
  MEDIA_PORT_MIN, MEDIA_PORT_MAX   media port range of rtpengine and trunkline-media
                     (30000, 39999: trunkline's default)
  RTPE_LOG_LEVEL     rtpengine log-level (5)
  CLUSTER_HOLD_MS    how long every call of trunkline-hold and trunkline-cluster is held
                     before its BYE (1000; a call that ends within one 50 ms replication tick
                     of its 200 is never sent to the buddy, so 0 measures almost no replication)
  CLUSTER_LEASE_TTL  lease_ttl_secs of both clustered nodes (10, the node's default)
  ETCD_BIN           etcd (Debian etcd-server: /usr/bin/etcd)
  ETCD_IDLE_SECS     trunkline-cluster fixed-rate run: seconds of idle etcd traffic measured
                     before the calls, subtracted at that rate from the calls' (10 / 5)
  ETCD_KEEP_DATA     1: keep each phase's etcd data dir (removed once etcd stops: ~120 MB each)
  PROFILE_RATE, PROFILE_SECS, PROFILE_CALLGRAPH   --profile: calls/s, seconds, perf call-graph
                     mode (200, 12, fp; "dwarf" gives fuller stacks at a higher cost)
  UAC_PORT UAS_PORT KAM_PORT TL_PORT TL_METRICS_PORT TL_ADMIN_PORT HELD_UAC_PORT REDIS_PORT
  RTPE_NG_PORT RTPE_CLI_PORT
                     (5080 5090 5060 5062 9465 50061 5082 16379 12222 12224)
  TL_CLUSTER_PORT BUDDY_PORT BUDDY_METRICS_PORT BUDDY_ADMIN_PORT BUDDY_CLUSTER_PORT
  ETCD_CLIENT_PORT ETCD_PEER_PORT
                     (7062 5064 9466 50062 7064 12379 12380)
EOF
}

# shellcheck source=load/lib.sh
. "$HERE/lib.sh"
ALL_SYSTEMS="sipp,kamailio-dialog,kamailio-rtpengine,trunkline,trunkline-media,kamailio,trunkline-watch10,trunkline-listcalls,trunkline-hold,trunkline-cluster,trunkline-auth,kamailio-auth,trunkline-tcp,trunkline-tls"
DEFAULT_SYSTEMS="sipp,kamailio-dialog,kamailio-rtpengine,trunkline,trunkline-media"
parse_args "$ALL_SYSTEMS" "profile" "$@"
if [ "$PROFILE" = 1 ] && [ "$SYSTEMS_GIVEN" = 0 ]; then SYS_LIST=(trunkline-media); fi
# Measure in the documented order, whatever order --systems named them in.
ordered=()
IFS=',' read -r -a all_list <<<"$ALL_SYSTEMS"
for s in "${all_list[@]}"; do
	for t in "${SYS_LIST[@]}"; do
		if [ "$s" = "$t" ]; then ordered+=("$s"); break; fi
	done
done
SYS_LIST=("${ordered[@]}")
SYSTEMS=$(IFS=,; echo "${SYS_LIST[*]}")

if [ "$QUICK" = 1 ]; then
	: "${ROUNDS:=1}" "${STEP_SECS:=3}" "${BISECT:=1}" "${FIXED_RATE:=100}" "${FIXED_SECS:=5}" "${FIXED_WARMUP_SECS:=0}"
	: "${STEP_WARMUP_CALLS:=0}"
	: "${HOLD_CALLS:=1000}" "${HOLD_RATE:=200}" "${ETCD_IDLE_SECS:=5}"
else
	: "${ROUNDS:=3}" "${STEP_SECS:=10}" "${BISECT:=3}" "${FIXED_RATE:=200}" "${FIXED_SECS:=20}" "${FIXED_WARMUP_SECS:=15}"
	: "${STEP_WARMUP_CALLS:=3000}"
	: "${HOLD_CALLS:=10000}" "${HOLD_RATE:=200}" "${ETCD_IDLE_SECS:=10}"
fi
case "$ROUNDS" in '' | *[!0-9]* | 0*) echo "ROUNDS must be a positive whole number, not '$ROUNDS'" >&2; exit 2 ;; esac
: "${STEP_WARMUP_RATE:=1500}"
for v in STEP_WARMUP_CALLS STEP_WARMUP_RATE; do
	case "${!v}" in '' | *[!0-9]* | 0?*) echo "$v must be a whole number without a leading zero, not '${!v}'" >&2; exit 2 ;; esac
done
[ "$STEP_WARMUP_RATE" -gt 0 ] || { echo "STEP_WARMUP_RATE must be above 0" >&2; exit 2; }
: "${MEDIA_HOLD_CALLS:=$((HOLD_CALLS < 2000 ? HOLD_CALLS : 2000))}"
: "${SEARCH_START:=100}" "${SIPP_SEARCH_START:=1000}" "${SEARCH_MAX:=64000}"
: "${UAC_PORT:=5080}" "${UAS_PORT:=5090}" "${KAM_PORT:=5060}" "${TL_PORT:=5062}"
: "${TL_METRICS_PORT:=9465}" "${REDIS_PORT:=16379}" "${TL_READY_SECS:=20}"
: "${TL_ADMIN_PORT:=50061}" "${HELD_UAC_PORT:=5082}" "${WATCHERS:=10}"
: "${TL_TLS_PORT:=5063}" "${STUNNEL_UAC_PORT:=5095}" "${STUNNEL_UAS_PORT:=5093}"
: "${LIST_HELD_CALLS:=10000}" "${LIST_HELD_RATE:=1000}"
: "${GRPC_PYTHON:=$ROOT/target/grpc-venv/bin/python3}"
: "${RTPE_NG_PORT:=12222}" "${RTPE_CLI_PORT:=12224}" "${RTPE_LOG_LEVEL:=5}" "${RTPE_READY_SECS:=10}"
: "${MEDIA_PORT_MIN:=30000}" "${MEDIA_PORT_MAX:=39999}"
: "${PROFILE_RATE:=200}" "${PROFILE_SECS:=12}" "${PROFILE_CALLGRAPH:=fp}"
: "${CLUSTER_HOLD_MS:=1000}" "${CLUSTER_LEASE_TTL:=10}" "${ETCD_BIN:=etcd}" "${ETCD_READY_SECS:=20}"
: "${ETCD_KEEP_DATA:=0}" "${TL_CLUSTER_PORT:=7062}" "${BUDDY_PORT:=5064}" "${BUDDY_METRICS_PORT:=9466}"
: "${BUDDY_ADMIN_PORT:=50062}" "${BUDDY_CLUSTER_PORT:=7064}" "${ETCD_CLIENT_PORT:=12379}" "${ETCD_PEER_PORT:=12380}"
HOST=127.0.0.1
# shellcheck disable=SC2054 # "all,-abortunexp" is one SIPp argument
SIPP_COMMON=(-i "$HOST" -nostdin -default_behaviors all,-abortunexp -buff_size 4194304)

out_dir bench.log
RUN=$(mktemp -d /tmp/trunkline-bench.XXXXXX) # sockets, pid files, generated config
ON_EXIT+=('rm -rf "$RUN"')

is_media() { [ "$1" = kamailio-rtpengine ] || [ "$1" = trunkline-media ]; }

# ------------------------------------------------------------ SIPp ends
UAS_PID=""
# The callee's scenario and transport arguments: the stream rows use TCP (-t t1).
UAS_XML="$SCEN/uas.xml"
SIPP_T=()
# Where the uac sends when that is not the address its Request-URIs name (-rsa).
UAC_VIA=()
uas_start() { # DIR
	mkdir -p "$1"
	(cd "$1" && exec sipp -sf "$UAS_XML" "${SIPP_COMMON[@]}" "${SIPP_T[@]}" -p "$UAS_PORT" \
		-trace_stat -fd 5 -trace_err -max_log_size 10000000 -trace_screen) \
		>"$1/uas.stdout" 2>"$1/uas.stderr" &
	UAS_PID=$!
	STARTED+=("$UAS_PID")
	sleep 0.3
	kill -0 "$UAS_PID" 2>/dev/null || die "SIPp uas did not start (port $UAS_PORT busy?): $(tail -3 "$1/uas.stderr")"
}
uas_stop() { stop_pid "$UAS_PID"; UAS_PID=""; }

UAC_PID=""
# The caller's scenario and extra arguments: the *-auth rows set digest credentials.
UAC_XML=uac.xml
UAC_AUTH=()
AUTH_USER=bench
AUTH_PASSWORD=bench-digest-pw
# start the uac in the background: DIR TARGET RATE CALLS HOLD_MS TIMEOUT_S [extra sipp args]
uac_start() {
	local dir=$1 target=$2 rate=$3 calls=$4 hold=$5 tmo=$6
	shift 6
	mkdir -p "$dir"
	(cd "$dir" && exec sipp "$target" -sf "$SCEN/$UAC_XML" "${SIPP_COMMON[@]}" -p "$UAC_PORT" \
		-r "$rate" -m "$calls" -d "$hold" -timeout "${tmo}s" -recv_timeout 5000 \
		-trace_rtt -rtt_freq 1 -trace_stat -fd 1 -trace_err -max_log_size 10000000 \
		-trace_screen "${UAC_AUTH[@]}" "${SIPP_T[@]}" "${UAC_VIA[@]}" "$@") >"$dir/uac.stdout" 2>"$dir/uac.stderr" &
	UAC_PID=$!
	STARTED+=("$UAC_PID")
}
uac_wait() {
	local rc=0
	wait "$UAC_PID" || rc=$?
	UAC_PID=""
	return $rc
}

# ------------------------------------------------------------ systems under test
SUT_PIDS=""   # root PIDs whose process trees are measured
SUT_TARGET=""
HELPER_PID="" # the process beside Kamailio that its row includes (redis or rtpengine)
HELPER_NAME=""
KAM_PID="" REDIS_PID="" RTPE_PID="" TL_PID="" KAM_CTL=""

redis_start() { # DIR
	local d=$1 i
	mkdir -p "$RUN/redis"
	rm -rf "${RUN:?}/redis/"*
	redis-server --port "$REDIS_PORT" --bind "$HOST" --dir "$RUN/redis" --save '' \
		--appendonly no --daemonize no --logfile "$d/redis.log" &
	REDIS_PID=$!
	STARTED+=("$REDIS_PID")
	for i in $(seq 1 50); do
		[ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break
		kill -0 "$REDIS_PID" 2>/dev/null || die "redis-server exited; see $d/redis.log"
		sleep 0.1
	done
	[ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] || die "redis did not answer on port $REDIS_PORT"
	HELPER_PID=$REDIS_PID HELPER_NAME=redis
}

# ng ping over UDP: exit 0 when the relay answers
ng_ping() {
	python3 - "$HOST" "$RTPE_NG_PORT" <<'PY'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.3)
try:
    s.sendto(b"benchsh_ping d7:command4:pinge", (sys.argv[1], int(sys.argv[2])))
    data, _ = s.recvfrom(65536)
    sys.exit(0 if data.startswith(b"benchsh_ping ") and b"pong" in data else 1)
except OSError:
    sys.exit(1)
PY
}

# ng list over UDP: prints how many sessions the relay still holds (up to 10000), or nothing
ng_sessions() {
	python3 - "$HOST" "$RTPE_NG_PORT" <<'PY'
import re, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
try:
    s.sendto(b"benchsh_list d7:command4:list5:limiti10000ee", (sys.argv[1], int(sys.argv[2])))
    data, _ = s.recvfrom(1 << 20)
except OSError:
    sys.exit(0)
m = re.search(rb"5:callsl(.*)e", data, re.S)
# each entry is "<len>:<call-id>"
body = m.group(1) if m else b""
count, i = 0, 0
while i < len(body) and body[i:i + 1].isdigit():
    j = body.index(b":", i)
    i = j + 1 + int(body[i:j])
    count += 1
print(count)
PY
}

rtpe_start() { # DIR: userspace rtpengine, trunkline's default port range, ports freed at once
	local d=$1 i
	cat >"$d/rtpengine.conf" <<EOF
# generated by load/bench.sh: userspace-only rtpengine on loopback, private ng/cli ports
[rtpengine]
# -1: no kernel forwarding table (as the trunkline rows, no kernel module)
table = -1
interface = $HOST
listen-ng = $HOST:$RTPE_NG_PORT
listen-cli = $HOST:$RTPE_CLI_PORT
foreground = true
log-stderr = true
log-level = $RTPE_LOG_LEVEL
port-min = $MEDIA_PORT_MIN
port-max = $MEDIA_PORT_MAX
timeout = 60
silent-timeout = 3600
num-threads = 2
# free a deleted call's ports at once (default: 30 s later)
delete-delay = 0
pidfile = $RUN/rtpengine.pid
EOF
	rtpengine --config-file="$d/rtpengine.conf" >"$d/rtpengine.log" 2>&1 &
	RTPE_PID=$!
	STARTED+=("$RTPE_PID")
	for i in $(seq 1 $((RTPE_READY_SECS * 5))); do
		kill -0 "$RTPE_PID" 2>/dev/null || die "rtpengine exited at start-up; see $d/rtpengine.log: $(tail -3 "$d/rtpengine.log")"
		ng_ping && break
		sleep 0.2
	done
	ng_ping || die "rtpengine did not answer an ng ping on $HOST:$RTPE_NG_PORT within ${RTPE_READY_SECS}s; see $d/rtpengine.log"
	HELPER_PID=$RTPE_PID HELPER_NAME=rtpengine
}

kam_start() { # DIR MODE (dialog | rtpengine | topos)
	local d=$1 mode=$2 i defs=(-A WITH_DIALOG)
	mkdir -p "$d" "$RUN/kam"
	rm -rf "${RUN:?}/kam/"*
	HELPER_PID="" HELPER_NAME=""
	case "$mode" in
	topos)
		redis_start "$d"
		defs+=(-A WITH_TOPOS -A "REDIS_SERVER=\"name=tps;addr=$HOST;port=$REDIS_PORT;db=1\"")
		;;
	rtpengine)
		rtpe_start "$d"
		defs+=(-A WITH_RTPENGINE -A "RTPENGINE_SOCK=\"udp:$HOST:$RTPE_NG_PORT\"")
		;;
	auth) defs+=(-A WITH_AUTH -A "AUTH_PASSWORD=\"$AUTH_PASSWORD\"") ;;
	esac
	KAM_CTL="unix:$RUN/kam/ctl"
	kamailio -f "$HERE/kamailio.cfg" -DD -E -m 1024 -M 16 -x tlsf -X tlsf \
		-Y "$RUN/kam" -P "$RUN/kam/kamailio.pid" -w "$RUN/kam" "${defs[@]}" \
		-A "KAM_LISTEN=udp:$HOST:$KAM_PORT" -A "KAM_ALIAS=\"$HOST:$KAM_PORT\"" \
		-A "CTL_SOCK=\"$KAM_CTL\"" -A "UAS_DST=\"sip:$HOST:$UAS_PORT\"" \
		>"$d/kamailio.log" 2>&1 &
	KAM_PID=$!
	STARTED+=("$KAM_PID")
	for i in $(seq 1 150); do
		kamcmd -s "$KAM_CTL" core.uptime >/dev/null 2>&1 && break
		kill -0 "$KAM_PID" 2>/dev/null || die "kamailio exited at start-up; see $d/kamailio.log: $(tail -3 "$d/kamailio.log")"
		sleep 0.1
	done
	kamcmd -s "$KAM_CTL" core.uptime >/dev/null 2>&1 || die "kamailio control socket not answering; see $d/kamailio.log"
	sleep 0.5 # let every worker finish its child_init
	SUT_PIDS="$KAM_PID${HELPER_PID:+ $HELPER_PID}"
	SUT_TARGET="$HOST:$KAM_PORT"
}
kam_stop() {
	stop_pid "$KAM_PID"
	stop_pid "$REDIS_PID"
	stop_pid "$RTPE_PID"
	KAM_PID="" REDIS_PID="" RTPE_PID="" HELPER_PID="" HELPER_NAME=""
}

TL_BIN_RESOLVED=""
tl_resolve_bin() {
	[ -n "$TL_BIN_RESOLVED" ] && return 0
	if [ -n "${TRUNKLINE_BIN:-}" ]; then
		[ -x "$TRUNKLINE_BIN" ] || die "TRUNKLINE_BIN=$TRUNKLINE_BIN is not an executable file"
		TL_BIN_RESOLVED=$TRUNKLINE_BIN
		log "trunkline binary: $TL_BIN_RESOLVED (TRUNKLINE_BIN)"
		return
	fi
	log "building trunkline: cargo build --release --bin trunkline (log: $OUT/cargo-build.log)"
	if ! (cd "$ROOT" && cargo build --release --bin trunkline) >"$OUT/cargo-build.log" 2>&1; then
		tail -20 "$OUT/cargo-build.log" >&2
		die "cargo build --release --bin trunkline failed (full log: $OUT/cargo-build.log). Set TRUNKLINE_BIN=... or leave the trunkline rows out of --systems"
	fi
	local tdir
	tdir=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps 2>/dev/null |
		python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null || echo "$ROOT/target")
	TL_BIN_RESOLVED="$tdir/release/trunkline"
	[ -x "$TL_BIN_RESOLVED" ] || die "build succeeded but $TL_BIN_RESOLVED is missing"
	log "trunkline binary: $TL_BIN_RESOLVED"
}

tl_start() { # DIR MEDIA(0|1) [CLUSTER(0|1)]
	local d=$1 media=$2 cluster=${3:-0}
	mkdir -p "$d"
	tl_node "$d" trunkline bench "$TL_PORT" "$TL_METRICS_PORT" "$TL_ADMIN_PORT" "$media" \
		"$([ "$cluster" = 1 ] && cluster_section "$TL_CLUSTER_PORT")"
	TL_PID=$NODE_PID
	SUT_PIDS="$TL_PID"
	SUT_TARGET="$HOST:$TL_PORT"
}
tl_stop() { stop_pid "$TL_PID"; TL_PID=""; }
# trunkline-auth: no access network covers the caller; it is the trunk "caller" by its
# digest credentials, so every call is challenged and proves them. The per-source request
# limit is off, as Kamailio's pike is in kamailio-auth: a source that is no trunk's is
# counted until its first successful authentication, and the rate search's opening burst
# (several INVITEs, their 407s' ACKs) would pass the default 32 messages in 2 s.
tl_auth_start() { # DIR
	local d=$1
	mkdir -p "$d"
	TRUNKLINE_SIP__ACCESS_SOURCES='["192.0.2.1/32"]' TRUNKLINE_SIP__AUTH__ALGORITHMS='["MD5"]' \
		TRUNKLINE_SIP__SOURCE_LIMIT__MAX_REQUESTS=0 \
		tl_node "$d" trunkline bench "$TL_PORT" "$TL_METRICS_PORT" "$TL_ADMIN_PORT" 0 \
		"# trunkline-auth: the caller is this trunk by its digest credentials
[[trunks]]
name = \"caller\"
address = \"192.0.2.99:5060\"

[trunks.auth]
username = \"$AUTH_USER\"
password = \"$AUTH_PASSWORD\""
	TL_PID=$NODE_PID
	SUT_PIDS="$TL_PID"
	SUT_TARGET="$HOST:$TL_PORT"
}

# trunkline-tcp / trunkline-tls: both legs over one stream connection each. For TLS,
# stunnel turns the uac's TCP connection into TLS toward the node's TLS listener and the
# node's TLS connection to the trunk back into TCP toward the uas (whose Contact names
# stunnel's port, so in-dialog requests take the same way). The node checks the trunk's
# certificate (CA and IP address) as in production; stunnel checks nothing.
STUNNEL_PID=""
tls_files() { # makes $RUN/tls/{ca,leaf}.{crt,key} once: one CA, one leaf for $HOST
	local t="$RUN/tls"
	[ -f "$t/leaf.crt" ] && return 0
	mkdir -p "$t"
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
		-subj "/CN=bench CA" -keyout "$t/ca.key" -out "$t/ca.crt" >/dev/null 2>&1 || die "openssl: CA"
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$HOST" \
		-keyout "$t/leaf.key" -out "$t/leaf.csr" >/dev/null 2>&1 || die "openssl: leaf request"
	printf 'subjectAltName=IP:%s\n' "$HOST" >"$t/leaf.ext"
	openssl x509 -req -in "$t/leaf.csr" -CA "$t/ca.crt" -CAkey "$t/ca.key" -CAcreateserial \
		-days 2 -extfile "$t/leaf.ext" -out "$t/leaf.crt" >/dev/null 2>&1 || die "openssl: leaf"
	# The uas's Contact names stunnel's port, where the node's TLS connection arrives.
	sed "s/\[local_port\];transport=\[transport\]/$STUNNEL_UAS_PORT;transport=tls/" \
		"$SCEN/uas.xml" >"$RUN/uas_tls.xml"
}
stunnel_start() { # DIR
	local d=$1 i
	cat >"$d/stunnel.conf" <<EOF
foreground = yes
pid =
debug = 4
output = $d/stunnel.log

[uac]
client = yes
accept = $HOST:$STUNNEL_UAC_PORT
connect = $HOST:$TL_TLS_PORT

[uas]
accept = $HOST:$STUNNEL_UAS_PORT
connect = $HOST:$UAS_PORT
cert = $RUN/tls/leaf.crt
key = $RUN/tls/leaf.key
EOF
	stunnel "$d/stunnel.conf" >"$d/stunnel.stdout" 2>&1 &
	STUNNEL_PID=$!
	STARTED+=("$STUNNEL_PID")
	for i in $(seq 1 50); do
		python3 "$LIB" bound "$STUNNEL_PID" "$STUNNEL_UAC_PORT" "$STUNNEL_UAS_PORT" && return 0
		kill -0 "$STUNNEL_PID" 2>/dev/null || break
		sleep 0.1
	done
	die "stunnel did not listen on $HOST:$STUNNEL_UAC_PORT and :$STUNNEL_UAS_PORT: $(tail -3 "$d/stunnel.log" "$d/stunnel.stdout" 2>/dev/null)"
}
tl_stream_start() { # DIR tcp|tls
	local d=$1 t=$2
	mkdir -p "$d"
	SIPP_T=(-t t1)
	if [ "$t" = tcp ]; then
		TRUNKLINE_SIP__TCP="[\"$HOST:$TL_PORT\"]" TL_UAS_TRANSPORT=tcp \
			tl_node "$d" trunkline bench "$TL_PORT" "$TL_METRICS_PORT" "$TL_ADMIN_PORT" 0
		SUT_TARGET="$HOST:$TL_PORT"
	else
		tls_files
		UAS_XML="$RUN/uas_tls.xml"
		TRUNKLINE_SIP__TLS="[\"$HOST:$TL_TLS_PORT\"]" TRUNKLINE_SIP__TLS_CERT_FILE="$RUN/tls/leaf.crt" \
			TRUNKLINE_SIP__TLS_KEY_FILE="$RUN/tls/leaf.key" TL_UAS_TRANSPORT=tls \
			TL_UAS_ADDRESS="$HOST:$STUNNEL_UAS_PORT" TL_UAS_EXTRA="# A TLS trunk's calls may come from any port of its IP, the caller's stunnel's too:
# on one host the trunk's source is narrowed to its port, so the caller is no trunk.
sources = [\"$HOST:$STUNNEL_UAS_PORT\"]
[trunks.tls]
ca_file = \"$RUN/tls/ca.crt\"" \
			tl_node "$d" trunkline bench "$TL_PORT" "$TL_METRICS_PORT" "$TL_ADMIN_PORT" 0
		stunnel_start "$d"
		# The Request-URI names the node's TLS listener (a node refuses requests for
		# addresses not its own); the uac's connection goes to stunnel.
		SUT_TARGET="$HOST:$TL_TLS_PORT"
		UAC_VIA=(-rsa "$HOST:$STUNNEL_UAC_PORT")
	fi
	TL_PID=$NODE_PID
	SUT_PIDS="$TL_PID"
}

# Writes NAME.toml (in $RUN, a copy in DIR), starts the node with its log in DIR/NAME.log and
# waits for its /health: DIR NAME ID SIP_PORT METRICS_PORT ADMIN_PORT MEDIA(0|1) [EXTRA].
# Sets NODE_PID. EXTRA (a [cluster] section) goes at the end; without it the file is the one
# the trunkline rows have always run with.
NODE_PID=""
tl_node() {
	local d=$1 name=$2 id=$3 sip=$4 metrics=$5 admin=$6 media=$7 extra=${8:-} i media_section pid
	if [ "$media" = 0 ]; then
		media_section='# Signalling only, like the Kamailio it is compared with (kamailio-dialog).
[media]
enabled = false'
	elif [ "$MEDIA_PORT_MIN" != 30000 ] || [ "$MEDIA_PORT_MAX" != 39999 ]; then
		media_section="# Media anchored (the default), on the port range rtpengine gets too.
[media]
port_min = $MEDIA_PORT_MIN
port_max = $MEDIA_PORT_MAX"
	else
		media_section='# No [media] section: media anchored on 127.0.0.1 with the default port range
# (30000-39999), timeout and forwarding threads, as a node with no media config runs.'
	fi
	cat >"$RUN/$name.toml" <<EOF
# generated by load/bench.sh
[node]
id = "$id"

[sip]
udp = ["$HOST:$sip"]
tcp = []

[metrics]
listen = "$HOST:$metrics"

[admin]
listen = "$HOST:$admin"

[log]
level = "warn"

$media_section

[[trunks]]
name = "uas"
address = "${TL_UAS_ADDRESS:-$HOST:$UAS_PORT}"
transport = "${TL_UAS_TRANSPORT:-udp}"
${TL_UAS_EXTRA:-}

[routing]
default_trunk = "uas"
EOF
	[ -n "$extra" ] && printf '\n%s\n' "$extra" >>"$RUN/$name.toml"
	cp "$RUN/$name.toml" "$d/$name.toml"
	"$TL_BIN_RESOLVED" --config "$RUN/$name.toml" >"$d/$name.log" 2>&1 &
	pid=$!
	NODE_PID=$pid
	STARTED+=("$pid")
	for i in $(seq 1 $((TL_READY_SECS * 10))); do
		curl -sf -o /dev/null "http://$HOST:$metrics/health" && break
		if ! kill -0 "$pid" 2>/dev/null; then
			local rc=0
			wait "$pid" || rc=$?
			die "$name ($TL_BIN_RESOLVED --config $d/$name.toml) exited with status $rc before becoming ready. Last log lines:
$(tail -10 "$d/$name.log")"
		fi
		sleep 0.1
	done
	curl -sf -o /dev/null "http://$HOST:$metrics/health" ||
		die "$name did not answer http://$HOST:$metrics/health within ${TL_READY_SECS}s; see $d/$name.log"
}

# ------------------------------------------------------------ cluster (trunkline-cluster)
# The node under test (id "bench") and its buddy (id "buddy") join the row's own etcd; with
# two nodes on the ring the buddy is the next node after "bench" for every call, so every
# settled call of the node under test is replicated to it (replication_factor 1).
cluster_section() { # CLUSTER_PORT
	cat <<EOF
# trunkline-cluster: membership in the row's own etcd, replication to the next node on the ring
[cluster]
etcd_endpoints = ["http://$HOST:$ETCD_CLIENT_PORT"]
lease_ttl_secs = $CLUSTER_LEASE_TTL
listen = "$HOST:$1"
replication_factor = 1
EOF
}
ETCD_PID="" ETCD_DATA="" BUDDY_PID=""
ON_EXIT+=('[ "$ETCD_KEEP_DATA" = 1 ] || [ -z "$ETCD_DATA" ] || rm -rf "$ETCD_DATA"')
etcd_start() { # DIR: a fresh single-member etcd on loopback, data under DIR
	local d=$1 i url="http://$HOST:$ETCD_CLIENT_PORT" peer="http://$HOST:$ETCD_PEER_PORT"
	ETCD_DATA="$d/etcd-data"
	rm -rf "$ETCD_DATA"
	"$ETCD_BIN" --name bench --data-dir "$ETCD_DATA" \
		--listen-client-urls "$url" --advertise-client-urls "$url" \
		--listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
		--initial-cluster "bench=$peer" --initial-cluster-state new >"$d/etcd.log" 2>&1 &
	ETCD_PID=$!
	STARTED+=("$ETCD_PID")
	for i in $(seq 1 $((ETCD_READY_SECS * 10))); do
		curl -s -m 1 "$url/health" 2>/dev/null | grep -q '"health":"true"' && return 0
		kill -0 "$ETCD_PID" 2>/dev/null || die "etcd exited at start-up (ports $ETCD_CLIENT_PORT/$ETCD_PEER_PORT busy?); see $d/etcd.log: $(tail -3 "$d/etcd.log")"
		sleep 0.1
	done
	die "etcd did not answer $url/health within ${ETCD_READY_SECS}s; see $d/etcd.log"
}
etcd_stop() {
	stop_pid "$ETCD_PID"
	ETCD_PID=""
	[ "$ETCD_KEEP_DATA" = 1 ] || { [ -n "$ETCD_DATA" ] && rm -rf "$ETCD_DATA"; }
	ETCD_DATA=""
}
metric() { # PORT NAME: an unlabelled sample of a trunkline node's metrics (empty if none)
	curl -s -m 2 "http://$HOST:$1/metrics" 2>/dev/null | awk -v n="$2" '$1 == n && !seen {print $2; seen = 1}' || true
}
cluster_start() { # DIR
	local d=$1 i a b r
	mkdir -p "$d"
	etcd_start "$d"
	tl_node "$d" buddy buddy "$BUDDY_PORT" "$BUDDY_METRICS_PORT" "$BUDDY_ADMIN_PORT" 0 \
		"$(cluster_section "$BUDDY_CLUSTER_PORT")"
	BUDDY_PID=$NODE_PID
	tl_start "$d" 0 1
	# Both nodes see both, and the node under test has sent the buddy its first (full) batch:
	# the replication channel is up before the first call.
	for i in $(seq 1 $((TL_READY_SECS * 10))); do
		a=$(metric "$TL_METRICS_PORT" trunkline_cluster_members)
		b=$(metric "$BUDDY_METRICS_PORT" trunkline_cluster_members)
		r=$(metric "$TL_METRICS_PORT" trunkline_cluster_replication_batches_total)
		[ "${a:-0}" = 2 ] && [ "${b:-0}" = 2 ] && [ "${r:-0}" != 0 ] && return 0
		sleep 0.1
	done
	die "trunkline-cluster: the nodes did not form a cluster within ${TL_READY_SECS}s (members seen: bench ${a:-?}, buddy ${b:-?}; batches sent ${r:-?}); see $d/trunkline.log, $d/buddy.log, $d/etcd.log"
}
cluster_stop() {
	tl_stop
	stop_pid "$BUDDY_PID"
	BUDDY_PID=""
	etcd_stop
}
# Scrapes of the node under test, the buddy and etcd, stamped: DIR TAG
cluster_scrape() {
	local d=$1 tag=$2
	date +%s.%N >"$d/scrape-$tag.time"
	curl -s -m 5 "http://$HOST:$TL_METRICS_PORT/metrics" >"$d/node-metrics-$tag.txt" 2>/dev/null || true
	curl -s -m 5 "http://$HOST:$BUDDY_METRICS_PORT/metrics" >"$d/buddy-metrics-$tag.txt" 2>/dev/null || true
	curl -s -m 5 "http://$HOST:$ETCD_CLIENT_PORT/metrics" >"$d/etcd-metrics-$tag.txt" 2>/dev/null || true
}

# ------------------------------------------------------------ admin API clients
TRUNKCTL_RESOLVED=""
ctl_resolve_bin() {
	[ -n "$TRUNKCTL_RESOLVED" ] && return 0
	if [ -n "${TRUNKCTL_BIN:-}" ]; then
		[ -x "$TRUNKCTL_BIN" ] || die "TRUNKCTL_BIN=$TRUNKCTL_BIN is not an executable file"
		TRUNKCTL_RESOLVED=$TRUNKCTL_BIN
	else
		TRUNKCTL_RESOLVED="$(dirname "$TL_BIN_RESOLVED")/trunkctl"
		if [ -z "${TRUNKLINE_BIN:-}" ] || [ ! -x "$TRUNKCTL_RESOLVED" ]; then
			log "building trunkctl: cargo build --release --bin trunkctl"
			(cd "$ROOT" && cargo build --release --bin trunkctl) >>"$OUT/cargo-build.log" 2>&1 ||
				die "cargo build --release --bin trunkctl failed (log: $OUT/cargo-build.log)"
			TRUNKCTL_RESOLVED="$(dirname "$TL_BIN_RESOLVED")/trunkctl"
		fi
	fi
	[ -x "$TRUNKCTL_RESOLVED" ] || die "no trunkctl at $TRUNKCTL_RESOLVED; set TRUNKCTL_BIN"
	log "trunkctl binary: $TRUNKCTL_RESOLVED"
}

API_PIDS=()
HELD_PID=""
# What a row adds once the node and the uas run: watchers, or held calls and a poller.
sut_ready() { # SYSTEM DIR
	local i n
	case "$1" in
	trunkline-watch10)
		for i in $(seq 1 "$WATCHERS"); do
			"$TRUNKCTL_RESOLVED" --server "$HOST:$TL_ADMIN_PORT" calls watch >/dev/null 2>"$2/watch-$i.stderr" &
			API_PIDS+=($!)
			STARTED+=($!)
		done
		sleep 0.5
		;;
	trunkline-listcalls)
		(cd "$2" && exec sipp "$SUT_TARGET" -sf "$SCEN/uac.xml" "${SIPP_COMMON[@]}" -p "$HELD_UAC_PORT" \
			-r "$LIST_HELD_RATE" -m "$LIST_HELD_CALLS" -d 3600000 -trace_err -trace_screen) \
			>"$2/held.stdout" 2>"$2/held.stderr" &
		HELD_PID=$!
		STARTED+=("$HELD_PID")
		for i in $(seq 1 $((LIST_HELD_CALLS / 100 + 60))); do
			n=$(curl -s -m 2 "http://$HOST:$TL_METRICS_PORT/metrics" | awk '/^trunkline_calls_active /{print $2}')
			[ "${n%.*}" -ge "$LIST_HELD_CALLS" ] 2>/dev/null && break
			sleep 0.5
		done
		[ "${n%.*}" -ge "$LIST_HELD_CALLS" ] 2>/dev/null ||
			die "trunkline-listcalls: only ${n:-0} of $LIST_HELD_CALLS held calls established; see $2/held.stderr"
		log "  $LIST_HELD_CALLS calls held; polling ListCalls (500 per page) once a second"
		"$GRPC_PYTHON" "$ROOT/tests/grpc/admin_client.py" "$HOST:$TL_ADMIN_PORT" poll \
			trunkline.admin.v1.CallService/ListCalls '{"pageSize": 500}' 1 "$2/listcalls-ms.txt" \
			2>"$2/poller.stderr" &
		API_PIDS+=($!)
		STARTED+=($!)
		sleep 1.5
		;;
	esac
}
# Before the row stops: how many watchers are still streaming (one that fell behind ends).
sut_api_collect() { # SYSTEM DIR
	local p alive=0
	case "$1" in
	trunkline-watch10)
		for p in "${API_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
		echo "$alive" >"$2/watchers-alive.txt"
		;;
	esac
}
api_stop() {
	local p
	for p in "${API_PIDS[@]}"; do stop_pid "$p"; done
	API_PIDS=()
	[ -n "$HELD_PID" ] && stop_pid "$HELD_PID"
	HELD_PID=""
}

sut_start() { # SYSTEM DIR
	UAC_XML=uac.xml UAC_AUTH=() UAS_XML="$SCEN/uas.xml" SIPP_T=() UAC_VIA=()
	case "$1" in *-auth) UAC_XML=uac_auth.xml UAC_AUTH=(-au "$AUTH_USER" -ap "$AUTH_PASSWORD") ;; esac
	case "$1" in
	sipp) SUT_PIDS="" SUT_TARGET="$HOST:$UAS_PORT" HELPER_PID="" HELPER_NAME="" ;;
	kamailio) kam_start "$2" topos ;;
	kamailio-dialog) kam_start "$2" dialog ;;
	kamailio-auth) kam_start "$2" auth ;;
	trunkline-auth) tl_auth_start "$2" ;;
	trunkline-tcp) tl_stream_start "$2" tcp ;;
	trunkline-tls) tl_stream_start "$2" tls ;;
	kamailio-rtpengine) kam_start "$2" rtpengine ;;
	trunkline) tl_start "$2" 0 ;;
	trunkline-media) tl_start "$2" 1 ;;
	trunkline-watch10 | trunkline-listcalls | trunkline-hold) tl_start "$2" 0 ;;
	trunkline-cluster) cluster_start "$2" ;;
	esac
}
sut_stop() {
	case "$1" in
	kamailio*) kam_stop ;;
	trunkline-cluster) cluster_stop ;;
	trunkline*)
		api_stop
		tl_stop
		[ -n "$STUNNEL_PID" ] && stop_pid "$STUNNEL_PID"
		STUNNEL_PID=""
		;;
	esac
	SUT_PIDS=""
}
# What the system itself counted, read after the uac and before the stop: trunkline's metrics
# (final statuses it sent, media ports) and Kamailio's statistics.
sut_collect() { # SYSTEM DIR
	case "$1" in
	trunkline-media)
		sleep 1.2 # the relay's gauges are refreshed once a second
		curl -s -m 5 "http://$HOST:$TL_METRICS_PORT/metrics" >"$2/metrics.txt" 2>/dev/null || true
		;;
	trunkline | trunkline-watch10 | trunkline-listcalls | trunkline-hold | trunkline-auth | trunkline-tcp | trunkline-tls)
		sut_api_collect "$1" "$2"
		curl -s -m 5 "http://$HOST:$TL_METRICS_PORT/metrics" >"$2/metrics.txt" 2>/dev/null || true
		;;
	trunkline-cluster)
		# the removals of the last calls go out on the next 50 ms tick; the node refreshes its
		# cluster metrics once a second
		sleep 1.2
		curl -s -m 5 "http://$HOST:$TL_METRICS_PORT/metrics" >"$2/metrics.txt" 2>/dev/null || true
		cluster_scrape "$2" after
		;;
	kamailio*) kamcmd -s "$KAM_CTL" stats.get_statistics all >"$2/kamailio-stats.txt" 2>&1 || true ;;&
	kamailio-rtpengine) ng_sessions >"$2/rtpengine-sessions.txt" || true ;;
	esac
}
sut_tree() { [ -n "$SUT_PIDS" ] && python3 "$LIB" tree $SUT_PIDS || true; }

summary() { echo "$2=$3" >>"$OUT/$1/summary.env"; } # SYSTEM KEY VALUE

# How long a call of the rate search and the fixed-rate run is held before its BYE (ms): 0,
# except for the cluster rows, whose calls must outlive a replication tick.
row_hold_ms() { case "$1" in trunkline-hold | trunkline-cluster) echo "$CLUSTER_HOLD_MS" ;; *) echo 0 ;; esac; }
# The uac's extra arguments and timeout slack for a held call mix: SIPp's default limit on
# open calls (3 x hold x rate) is too low for short holds, so it is given explicitly.
hold_args() { # SYSTEM RATE
	local h
	h=$(row_hold_ms "$1")
	[ "$h" -gt 0 ] && echo "-l $(($2 * (h / 1000 + 5)))"
	return 0
}

# ------------------------------------------------------------ phases
# CALLS calls at RATE on the system of phase DIR before the phase is measured, in DIR/warmup:
# what the system counted by then (trunkline's metrics, its log's 'no free media ports' lines)
# is kept there for the judge to subtract.
warm_up() { # SYSTEM DIR RATE CALLS
	local sys=$1 w="$2/warmup" rate=$3 calls=$4 hold res
	hold=$(row_hold_ms "$sys")
	# shellcheck disable=SC2046 # hold_args is zero or two words
	uac_start "$w" "$SUT_TARGET" "$rate" "$calls" "$hold" \
		$((calls / rate + 20 + hold / 1000)) $(hold_args "$sys" "$rate")
	uac_wait || true
	# Calls held past their BYE's retransmissions end before the measured load starts.
	sleep $((2 + hold / 1000))
	case "$sys" in
	trunkline*)
		curl -s -m 5 "http://$HOST:$TL_METRICS_PORT/metrics" >"$w/metrics.txt" 2>/dev/null || true
		python3 "$LIB" noports "$2" >"$w/no-free-media-ports.count"
		;;
	esac
	res=$(python3 "$LIB" judge "$w" "$rate" $((calls / rate)))
	log "    $sys: warm-up, $calls calls at $rate/s (not measured): $res"
}

# A rate-search step's warm-up: STEP_WARMUP_CALLS calls at STEP_WARMUP_RATE or the step's
# RATE, whichever is lower, for at most 3 s (the low steps are far from any system's limit).
step_warm_up() { # SYSTEM RATE DIR
	local rate=$2 calls
	[ "$STEP_WARMUP_CALLS" -gt 0 ] || return 0
	[ "$rate" -lt "$STEP_WARMUP_RATE" ] || rate=$STEP_WARMUP_RATE
	calls=$((rate * 3 < STEP_WARMUP_CALLS ? rate * 3 : STEP_WARMUP_CALLS))
	warm_up "$1" "$3" "$rate" "$calls"
}

# one bounded rate-search step; returns 0 on pass
STEP_RESULT=""
run_step() { # SYSTEM RATE
	local sys=$1 rate=$2 d="$OUT/$1/search/step-$2" calls hold
	calls=$((rate * STEP_SECS))
	hold=$(row_hold_ms "$sys")
	mkdir -p "$d"
	sut_start "$sys" "$d"
	uas_start "$d"
	sut_ready "$sys" "$d"
	step_warm_up "$sys" "$rate" "$d"
	[ "$sys" = trunkline-cluster ] && cluster_scrape "$d" before
	# shellcheck disable=SC2046 # hold_args is zero or two words
	uac_start "$d" "$SUT_TARGET" "$rate" "$calls" "$hold" $((STEP_SECS + 20 + hold / 1000)) $(hold_args "$sys" "$rate")
	uac_wait || true
	sut_collect "$sys" "$d"
	uas_stop
	sut_stop "$sys"
	STEP_RESULT=$(python3 "$LIB" judge "$d" "$rate" "$STEP_SECS")
	[ "$sys" = trunkline-cluster ] && STEP_RESULT+=" $(python3 "$LIB" clusterstep "$d")"
	log "  $sys @ $rate calls/s x ${STEP_SECS}s: $STEP_RESULT"
	[[ "$STEP_RESULT" == PASS* ]]
}

search() { # SYSTEM START
	local sys=$1 rate=$2 pass=0 fail=0 mid i
	log "$sys: rate search from $rate calls/s (steps of ${STEP_SECS}s, doubling, then $BISECT bisections)"
	while [ "$rate" -le "$SEARCH_MAX" ]; do
		if run_step "$sys" "$rate"; then pass=$rate; rate=$((rate * 2)); else fail=$rate; break; fi
	done
	if [ "$fail" = 0 ]; then
		summary "$sys" sustained "$pass"
		summary "$sys" sustained_note "search cap"
		return
	fi
	for ((i = 0; i < BISECT; i++)); do
		mid=$(((pass + fail) / 2))
		[ "$mid" -le "$pass" ] || [ "$mid" -ge "$fail" ] && break
		if run_step "$sys" "$mid"; then pass=$mid; else fail=$mid; fi
	done
	summary "$sys" sustained "$pass"
	[ "$pass" = 0 ] && summary "$sys" sustained_note "< $fail"
	summary "$sys" first_failing_rate "$fail"
	log "$sys: sustained $pass calls/s (first failing rate tried: $fail)"
}

fixed_run() { # SYSTEM — latency and CPU at FIXED_RATE
	local sys=$1 d="$OUT/$1/fixed" calls cpu0="" cpu1="" pids res hpids="" hcpu0="" hcpu1="" hname hold
	local bcpui="" bcpu0="" bcpu1="" ecpui="" ecpu0="" ecpu1=""
	calls=$((FIXED_RATE * FIXED_SECS))
	hold=$(row_hold_ms "$sys")
	log "$sys: fixed-rate run, $FIXED_RATE calls/s x ${FIXED_SECS}s (latency, CPU)"
	sut_start "$sys" "$d"
	uas_start "$d"
	sut_ready "$sys" "$d"
	if [ "$FIXED_WARMUP_SECS" -gt 0 ]; then
		warm_up "$sys" "$d" "$FIXED_RATE" $((FIXED_RATE * FIXED_WARMUP_SECS))
	fi
	if [ "$sys" = trunkline-cluster ]; then
		# etcd's idle traffic (lease keep-alives of both nodes), to subtract from the calls'
		log "  $sys: ${ETCD_IDLE_SECS}s of idle cluster first (etcd's requests without calls)"
		cluster_scrape "$d" idle
		bcpui=$(python3 "$LIB" cpu "$BUDDY_PID")
		ecpui=$(python3 "$LIB" cpu "$ETCD_PID")
		sleep "$ETCD_IDLE_SECS"
		bcpu0=$(python3 "$LIB" cpu "$BUDDY_PID")
		ecpu0=$(python3 "$LIB" cpu "$ETCD_PID")
		cluster_scrape "$d" before
	fi
	pids=$(sut_tree)
	hname=$HELPER_NAME
	[ -n "$HELPER_PID" ] && hpids=$(python3 "$LIB" tree "$HELPER_PID")
	[ -n "$pids" ] && cpu0=$(python3 "$LIB" cpu $pids)
	[ -n "$hpids" ] && hcpu0=$(python3 "$LIB" cpu $hpids)
	local api0="" api1=""
	[ "${#API_PIDS[@]}" -gt 0 ] && api0=$(python3 "$LIB" cpu "${API_PIDS[@]}")
	# shellcheck disable=SC2046 # hold_args is zero or two words
	uac_start "$d" "$SUT_TARGET" "$FIXED_RATE" "$calls" "$hold" $((FIXED_SECS + 20 + hold / 1000)) $(hold_args "$sys" "$FIXED_RATE")
	uac_wait || true
	[ -n "$pids" ] && cpu1=$(python3 "$LIB" cpu $pids)
	if [ "$sys" = trunkline-cluster ]; then
		bcpu1=$(python3 "$LIB" cpu "$BUDDY_PID")
		ecpu1=$(python3 "$LIB" cpu "$ETCD_PID")
	fi
	[ -n "$hpids" ] && hcpu1=$(python3 "$LIB" cpu $hpids)
	[ "${#API_PIDS[@]}" -gt 0 ] && api1=$(python3 "$LIB" cpu "${API_PIDS[@]}")
	# The API clients (watchers, poller) are not the node: their CPU is reported apart.
	[ -n "$api0" ] && [ -n "$api1" ] &&
		summary "$sys" api_clients_cpu_seconds_fixed_run "$(python3 -c "print('%.2f' % ($api1 - $api0))")"
	sut_collect "$sys" "$d"
	uas_stop
	sut_stop "$sys"
	res=$(python3 "$LIB" judge "$d" "$FIXED_RATE" "$FIXED_SECS")
	log "  $sys fixed: $res"
	python3 - "$d/step.json" "$OUT/$sys/summary.env" "$cpu0" "$cpu1" "$pids" "$hcpu0" "$hcpu1" "$hname" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
out = open(sys.argv[2], "a")
out.write("p50_ms=%s\np99_ms=%s\n" % (j["p50_ms"], j["p99_ms"]))
out.write("fixed_rate_failed_pct=%s\nfixed_rate_successful_calls=%s\n" % (j["fail_pct"], j["successful"]))
if j.get("refused"):
    out.write("fixed_rate_refused=%s\n" % j["refused"])
if not j["pass"]:
    out.write("fixed_rate_warning=fixed-rate run did not pass (%s)\n" % j["why"])
if sys.argv[3] and j["successful"]:
    cpu = float(sys.argv[4]) - float(sys.argv[3])
    out.write("cpu_seconds_fixed_run=%.2f\ncpu_per_1000=%.4f\n" % (cpu, 1000 * cpu / j["successful"]))
    out.write("cpu_measured_pids=%s\n" % sys.argv[5])
    if sys.argv[6]:
        r = float(sys.argv[7]) - float(sys.argv[6])
        out.write("cpu_per_1000_of_which_%s=%.4f\n" % (sys.argv[8], 1000 * r / j["successful"]))
PY
	if [ "$sys" = trunkline-cluster ]; then
		python3 "$LIB" clusterfixed "$d" "$bcpui" "$bcpu0" "$bcpu1" "$ecpui" "$ecpu0" "$ecpu1" >>"$OUT/$sys/summary.env"
		log "  $sys fixed: $(grep -E '^(replication_bytes_per_call|replication_batches_per_call|buddy_cpu_per_1000|etcd_requests_per_call)=' "$OUT/$sys/summary.env" | tr '\n' ' ')"
	fi
}

hold_run() { # SYSTEM — memory per established call
	local sys=$1 d="$OUT/$1/hold" pids base held est=0 created deadline hold_ms shm0="" shm1="" r0="" r1=""
	local last_est=-1 n=$HOLD_CALLS bbase="" bheld=""
	is_media "$sys" && n=$MEDIA_HOLD_CALLS
	log "$sys: holding $n calls (offered at $HOLD_RATE calls/s) for memory per call"
	sut_start "$sys" "$d"
	uas_start "$d"
	sleep 1
	pids=$(sut_tree)
	base=$(python3 "$LIB" pss $pids)
	if [ "$sys" = trunkline-cluster ]; then
		bbase=$(python3 "$LIB" pss "$BUDDY_PID")
		cluster_scrape "$d" before
	fi
	case "$sys" in kamailio*) shm0=$(kamcmd -s "$KAM_CTL" core.shmmem 2>/dev/null | tr -s ' \t\n' ' ' || true) ;; esac
	[ "$sys" = kamailio ] && r0=$(redis-cli -p "$REDIS_PORT" info memory 2>/dev/null | sed -n 's/^used_memory:\([0-9]*\).*/\1/p')
	hold_ms=$(((n / HOLD_RATE + 30) * 1000))
	deadline=$((SECONDS + n / HOLD_RATE + 25))
	uac_start "$d" "$SUT_TARGET" "$HOLD_RATE" "$n" "$hold_ms" $((hold_ms / 1000 + 30)) -l $((n + 10))
	while [ $SECONDS -lt $deadline ]; do
		sleep 1
		est=$(python3 "$LIB" rttcount "$d")
		created=$(python3 "$LIB" stat "$d" TotalCallCreated)
		[ "$est" -ge "$n" ] && break
		# every call offered and nothing new answered for a while: stop waiting
		if [ "${created:-0}" -ge "$n" ] && [ "$est" = "$last_est" ]; then break; fi
		last_est=$est
		kill -0 "$UAC_PID" 2>/dev/null || break
	done
	sleep 3 # let the last ACKs land
	est=$(python3 "$LIB" rttcount "$d")
	pids=$(sut_tree)
	held=$(python3 "$LIB" pss $pids)
	[ "$sys" = trunkline-cluster ] && bheld=$(python3 "$LIB" pss "$BUDDY_PID")
	case "$sys" in
	kamailio*)
		shm1=$(kamcmd -s "$KAM_CTL" core.shmmem 2>/dev/null | tr -s ' \t\n' ' ' || true)
		kamcmd -s "$KAM_CTL" dlg.stats_active >"$d/dlg_stats_active.txt" 2>&1 || true
		;;
	esac
	[ "$sys" = kamailio ] && r1=$(redis-cli -p "$REDIS_PORT" info memory 2>/dev/null | sed -n 's/^used_memory:\([0-9]*\).*/\1/p')
	sut_collect "$sys" "$d"
	stop_pid "$UAC_PID"
	UAC_PID=""
	uas_stop
	sut_stop "$sys"
	log "  $sys held: $est calls established; PSS (KiB) before/while held: ${base% *} / ${held% *}"
	python3 - "$OUT/$sys/summary.env" "$base" "$held" "$est" "$pids" "$shm0" "$shm1" "$r0" "$r1" "$n" <<'PY'
import re, sys
f, base, held, est, pids, shm0, shm1, r0, r1, n = sys.argv[1:]
pss0, rss0 = map(int, base.split()); pss1, rss1 = map(int, held.split()); est = int(est)
out = open(f, "a")
out.write("held_calls_offered=%s\nheld_calls_established=%d\n" % (n, est))
out.write("pss_kib_before=%d\npss_kib_held=%d\nrss_kib_before=%d\nrss_kib_held=%d\n" % (pss0, pss1, rss0, rss1))
out.write("memory_measured_pids=%s\n" % pids)
if est:
    out.write("kib_per_call=%.3f\nrss_kib_per_call=%.3f\n" % ((pss1 - pss0) / est, (rss1 - rss0) / est))
def used(s):
    m = re.search(r"\bused:?\s+(\d+)", s)
    return int(m.group(1)) if m else None
u0, u1 = used(shm0), used(shm1)
if u0 is not None and u1 is not None and est:
    out.write("kamailio_shm_used_bytes_before=%d\nkamailio_shm_used_bytes_held=%d\n" % (u0, u1))
    out.write("kamailio_shm_kib_per_call=%.3f\n" % ((u1 - u0) / 1024 / est))
if r0 and r1 and est:
    out.write("redis_used_memory_kib_per_call=%.3f\n" % ((int(r1) - int(r0)) / 1024 / est))
PY
	if [ "$sys" = trunkline-cluster ]; then
		python3 "$LIB" clusterhold "$d" "$bbase" "$bheld" "$est" >>"$OUT/$sys/summary.env"
		log "  $sys held: $(grep -E '^(buddy_replicas_held|buddy_rss_kib_per_replica|buddy_pss_kib_per_replica)=' "$OUT/$sys/summary.env" | tr '\n' ' ')"
	fi
}

# --profile: the system at a fixed rate under perf; the report goes beside the run's files.
profile_run() { # SYSTEM
	local sys=$1 d="$OUT/$1/profile" calls pids perf_pid res i cg=(-g)
	[ "$PROFILE_CALLGRAPH" = fp ] || cg=(--call-graph "$PROFILE_CALLGRAPH")
	calls=$((PROFILE_RATE * PROFILE_SECS))
	log "$sys: profile, $PROFILE_RATE calls/s x ${PROFILE_SECS}s under perf record ${cg[*]}"
	sut_start "$sys" "$d"
	uas_start "$d"
	sut_ready "$sys" "$d"
	pids=$(sut_tree)
	[ -n "$pids" ] || die "$sys: no process to profile"
	# The processes beside the node that the row's CPU counts too (rtpengine, the buddy
	# node, etcd) are profiled with it; `perf report --sort pid` tells them apart.
	[ -n "$HELPER_PID" ] && pids="$pids $(python3 "$LIB" tree "$HELPER_PID")"
	[ -n "${BUDDY_PID:-}" ] && pids="$pids $BUDDY_PID"
	[ -n "${ETCD_PID:-}" ] && pids="$pids $ETCD_PID"
	pids=$(printf '%s\n' $pids | sort -un | tr '\n' ' ')
	pids=${pids% }
	perf record "${cg[@]}" -o "$d/perf.data" -p "${pids// /,}" >"$d/perf-record.log" 2>&1 &
	perf_pid=$!
	STARTED+=("$perf_pid")
	sleep 0.5
	kill -0 "$perf_pid" 2>/dev/null || die "perf record did not start; see $d/perf-record.log: $(tail -3 "$d/perf-record.log")"
	uac_start "$d" "$SUT_TARGET" "$PROFILE_RATE" "$calls" 0 $((PROFILE_SECS + 20))
	uac_wait || true
	# perf writes its data on SIGINT; give it a while before the usual TERM/KILL.
	kill -INT "$perf_pid" 2>/dev/null || true
	for i in $(seq 1 300); do kill -0 "$perf_pid" 2>/dev/null || break; sleep 0.1; done
	stop_pid "$perf_pid"
	sut_collect "$sys" "$d"
	uas_stop
	sut_stop "$sys"
	res=$(python3 "$LIB" judge "$d" "$PROFILE_RATE" "$PROFILE_SECS")
	log "  $sys under perf: $res"
	{
		echo "# $sys at $PROFILE_RATE calls/s for ${PROFILE_SECS}s, perf record ${cg[*]} -p <its processes>"
		echo "# calls: $res"
		echo "# perf report --no-children --stdio -g none --percent-limit 0.3 --sort comm,dso,symbol"
		perf report -i "$d/perf.data" --no-children --stdio -g none --percent-limit 0.3 \
			--sort comm,dso,symbol 2>/dev/null | sed -E 's/[[:space:]]+(-[[:space:]]+)*$//'
	} >"$d/profile.txt"
	perf report -i "$d/perf.data" --no-children --stdio --percent-limit 2 2>/dev/null |
		sed -E 's/[[:space:]]+$//' >"$d/profile-callgraph.txt" || true
	log "$sys: profile in $d/profile.txt (call graphs: profile-callgraph.txt, data: perf.data)"
	echo
	echo "== $sys: top of perf report --no-children ($d/profile.txt)"
	grep -v '^#' "$d/profile.txt" | grep -v '^$' | head -30
}

# ------------------------------------------------------------ main
for s in "${SYS_LIST[@]}"; do mkdir -p "$OUT/$s"; : >"$OUT/$s/summary.env"; done
{
	echo "started=$(date -Is)"
	echo "mode=$([ "$PROFILE" = 1 ] && echo profile || { [ "$QUICK" = 1 ] && echo quick || echo full; })"
	echo "systems=$SYSTEMS"
	echo "rounds=$ROUNDS"
	echo "step_secs=$STEP_SECS"
	echo "step_warmup_calls=$STEP_WARMUP_CALLS"
	echo "step_warmup_rate=$STEP_WARMUP_RATE"
	echo "bisect=$BISECT"
	echo "search_start=$SEARCH_START (SIPp direct: $SIPP_SEARCH_START), cap $SEARCH_MAX"
	echo "fixed_rate=$FIXED_RATE"
	echo "fixed_secs=$FIXED_SECS"
	echo "fixed_warmup_secs=$FIXED_WARMUP_SECS"
	echo "hold_calls=$HOLD_CALLS"
	echo "media_hold_calls=$MEDIA_HOLD_CALLS"
	echo "hold_rate=$HOLD_RATE"
	echo "media_ports=$MEDIA_PORT_MIN-$MEDIA_PORT_MAX"
	[ "$PROFILE" = 1 ] && echo "profile=$PROFILE_RATE calls/s x ${PROFILE_SECS}s, call graph $PROFILE_CALLGRAPH"
	echo "ports=uac $UAC_PORT, uas $UAS_PORT, kamailio $KAM_PORT, trunkline $TL_PORT (metrics $TL_METRICS_PORT, admin $TL_ADMIN_PORT), redis $REDIS_PORT, rtpengine ng $RTPE_NG_PORT"
	echo "admin_rows=$WATCHERS watchers; $LIST_HELD_CALLS held calls at $LIST_HELD_RATE calls/s, ListCalls page 500 once a second"
	echo "cluster_rows=calls held ${CLUSTER_HOLD_MS} ms (trunkline-hold, trunkline-cluster); lease_ttl_secs $CLUSTER_LEASE_TTL; etcd idle window ${ETCD_IDLE_SECS}s; node cluster $TL_CLUSTER_PORT, buddy sip $BUDDY_PORT metrics $BUDDY_METRICS_PORT admin $BUDDY_ADMIN_PORT cluster $BUDDY_CLUSTER_PORT, etcd $ETCD_CLIENT_PORT/$ETCD_PEER_PORT"
	echo "cluster_hold_ms=$CLUSTER_HOLD_MS"
	echo "host=$(uname -srm), $(nproc) cpus, load avg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "sipp=$(sipp -v 2>&1 | grep -o 'SIPp v[^ ]*' | head -1)"
	echo "kamailio=$(kamailio -v 2>/dev/null | head -1 || true)"
	echo "rtpengine=$(rtpengine --version 2>&1 | head -1 || true)"
	echo "etcd=$("$ETCD_BIN" --version 2>/dev/null | head -1 || true)"
} >"$OUT/params.env"

log "output: $OUT"
sysctl -w net.core.rmem_max=8388608 net.core.wmem_max=8388608 >/dev/null 2>&1 ||
	log "note: could not raise net.core.rmem_max/wmem_max (SIPp buffers may be capped)"
ulimit -n 65536 2>/dev/null || true
for t in sipp python3 curl; do command -v "$t" >/dev/null || die "$t not found"; done
[ "$PROFILE" = 1 ] && { command -v perf >/dev/null || die "perf not found (Debian: apt-get install -y linux-perf)"; }

# pre-flight: fail early and clearly if a system cannot even start
MODDIR=/usr/lib/x86_64-linux-gnu/kamailio/modules
for s in "${SYS_LIST[@]}"; do
	case "$s" in
	kamailio*)
		for t in kamailio kamcmd; do command -v "$t" >/dev/null || die "$t not found (apt-get install kamailio)"; done
		;;&
	kamailio)
		for t in redis-server redis-cli; do command -v "$t" >/dev/null || die "$t not found (apt-get install redis-server)"; done
		[ -e "$MODDIR/topos_redis.so" ] || die "kamailio topos_redis module missing (apt-get install kamailio-redis-modules)"
		;;
	kamailio-rtpengine)
		command -v rtpengine >/dev/null || die "rtpengine not found (apt-get install --no-install-recommends rtpengine-daemon)"
		[ -e "$MODDIR/rtpengine.so" ] || die "kamailio rtpengine module missing ($MODDIR/rtpengine.so)"
		;;
	trunkline*)
		tl_resolve_bin
		;;&
	trunkline-watch10) ctl_resolve_bin ;;
	trunkline-cluster)
		command -v "$ETCD_BIN" >/dev/null || die "$ETCD_BIN not found (apt-get install etcd-server, or set ETCD_BIN)"
		;;
	trunkline-tls)
		for t in stunnel openssl; do command -v "$t" >/dev/null || die "$t not found (apt-get install stunnel4 openssl)"; done
		;;
	trunkline-listcalls)
		[ -x "$GRPC_PYTHON" ] || die "trunkline-listcalls needs a python3 with grpcio ($GRPC_PYTHON): run tests/run.sh once, or set GRPC_PYTHON"
		;;
	esac
	case "$s" in sipp) ;; *) sut_start "$s" "$OUT/$s/preflight" && sut_stop "$s" ;; esac
done

if [ "$PROFILE" = 1 ]; then
	for s in "${SYS_LIST[@]}"; do profile_run "$s"; done
	log "done; profiles under $OUT/<system>/profile/"
	exit 0
fi

# Rounds: every system once per round, so that a slow spell of the host does not fall on one
# row only.  With one round the run's files sit directly under $OUT, as they always have.
TOP=$OUT
for ((round = 1; round <= ROUNDS; round++)); do
	if [ "$ROUNDS" -gt 1 ]; then
		OUT="$TOP/round-$round"
		log "round $round of $ROUNDS"
	fi
	for s in "${SYS_LIST[@]}"; do mkdir -p "$OUT/$s"; touch "$OUT/$s/summary.env"; done
	for s in "${SYS_LIST[@]}"; do
		if [ "$s" = sipp ]; then search sipp "$SIPP_SEARCH_START"; else search "$s" "$SEARCH_START"; fi
		fixed_run "$s"
		# Memory per call does not move with the host's load: measured once.
		if [ "$round" = 1 ]; then
			case "$s" in sipp | trunkline-watch10 | trunkline-listcalls | trunkline-hold) ;; *) hold_run "$s" ;; esac
		fi
	done
	if [ "$ROUNDS" -gt 1 ]; then python3 "$LIB" report "$OUT" "${SYS_LIST[@]}" >/dev/null; fi
done
OUT=$TOP

log "done; results: $OUT/results.md"
echo
python3 "$LIB" report "$OUT" "${SYS_LIST[@]}"
