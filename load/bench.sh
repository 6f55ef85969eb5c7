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
	sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
	cat <<'EOF'
Options:
  --quick            smoke run: 3 s steps, one bisection, 1000 held calls (~2-3 min per system)
  --systems LIST     comma-separated subset of
                     sipp,kamailio-dialog,kamailio-rtpengine,trunkline,trunkline-media,kamailio,
                     trunkline-watch10,trunkline-listcalls
                     (default: all but kamailio, whose topos row needs redis, and the two
                     admin API rows: --systems trunkline,trunkline-watch10,trunkline-listcalls
                     compares them with the idle API)
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
  STEP_SECS          length of one rate-search step (10 / 3)
  BISECT             bisection steps after the doubling phase (3 / 1)
  SEARCH_START       first offered rate for the Kamailio and trunkline rows (100 / 100)
  SIPP_SEARCH_START  first offered rate for the SIPp-direct reference (1000 / 1000)
  SEARCH_MAX         never offer more than this (64000)
  FIXED_RATE, FIXED_SECS   fixed-rate run for latency and CPU (200, 20 / 100, 5)
  HOLD_CALLS, HOLD_RATE    held calls for memory and their offered rate (10000, 200 / 1000, 200)
  MEDIA_HOLD_CALLS   held calls of the media rows (HOLD_CALLS, at most 2000: a call takes four
                     media ports and the default range holds 10000)
  MEDIA_PORT_MIN, MEDIA_PORT_MAX   media port range of rtpengine and trunkline-media
                     (30000, 39999: trunkline's default)
  RTPE_LOG_LEVEL     rtpengine log-level (5)
  PROFILE_RATE, PROFILE_SECS, PROFILE_CALLGRAPH   --profile: calls/s, seconds, perf call-graph
                     mode (200, 12, fp; "dwarf" gives fuller stacks at a higher cost)
  UAC_PORT UAS_PORT KAM_PORT TL_PORT TL_METRICS_PORT TL_ADMIN_PORT HELD_UAC_PORT REDIS_PORT
  RTPE_NG_PORT RTPE_CLI_PORT
                     (5080 5090 5060 5062 9465 50061 5082 16379 12222 12224)
EOF
}

# shellcheck source=load/lib.sh
. "$HERE/lib.sh"
ALL_SYSTEMS="sipp,kamailio-dialog,kamailio-rtpengine,trunkline,trunkline-media,kamailio,trunkline-watch10,trunkline-listcalls"
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
	: "${STEP_SECS:=3}" "${BISECT:=1}" "${FIXED_RATE:=100}" "${FIXED_SECS:=5}"
	: "${HOLD_CALLS:=1000}" "${HOLD_RATE:=200}"
else
	: "${STEP_SECS:=10}" "${BISECT:=3}" "${FIXED_RATE:=200}" "${FIXED_SECS:=20}"
	: "${HOLD_CALLS:=10000}" "${HOLD_RATE:=200}"
fi
: "${MEDIA_HOLD_CALLS:=$((HOLD_CALLS < 2000 ? HOLD_CALLS : 2000))}"
: "${SEARCH_START:=100}" "${SIPP_SEARCH_START:=1000}" "${SEARCH_MAX:=64000}"
: "${UAC_PORT:=5080}" "${UAS_PORT:=5090}" "${KAM_PORT:=5060}" "${TL_PORT:=5062}"
: "${TL_METRICS_PORT:=9465}" "${REDIS_PORT:=16379}" "${TL_READY_SECS:=20}"
: "${TL_ADMIN_PORT:=50061}" "${HELD_UAC_PORT:=5082}" "${WATCHERS:=10}"
: "${LIST_HELD_CALLS:=10000}" "${LIST_HELD_RATE:=1000}"
: "${GRPC_PYTHON:=$ROOT/target/grpc-venv/bin/python3}"
: "${RTPE_NG_PORT:=12222}" "${RTPE_CLI_PORT:=12224}" "${RTPE_LOG_LEVEL:=5}" "${RTPE_READY_SECS:=10}"
: "${MEDIA_PORT_MIN:=30000}" "${MEDIA_PORT_MAX:=39999}"
: "${PROFILE_RATE:=200}" "${PROFILE_SECS:=12}" "${PROFILE_CALLGRAPH:=fp}"
HOST=127.0.0.1
# shellcheck disable=SC2054 # "all,-abortunexp" is one SIPp argument
SIPP_COMMON=(-i "$HOST" -nostdin -default_behaviors all,-abortunexp -buff_size 4194304)

out_dir bench.log
RUN=$(mktemp -d /tmp/trunkline-bench.XXXXXX) # sockets, pid files, generated config
ON_EXIT+=('rm -rf "$RUN"')

is_media() { [ "$1" = kamailio-rtpengine ] || [ "$1" = trunkline-media ]; }

# ------------------------------------------------------------ SIPp ends
UAS_PID=""
uas_start() { # DIR
	mkdir -p "$1"
	(cd "$1" && exec sipp -sf "$SCEN/uas.xml" "${SIPP_COMMON[@]}" -p "$UAS_PORT" \
		-trace_stat -fd 5 -trace_err -max_log_size 10000000 -trace_screen) \
		>"$1/uas.stdout" 2>"$1/uas.stderr" &
	UAS_PID=$!
	STARTED+=("$UAS_PID")
	sleep 0.3
	kill -0 "$UAS_PID" 2>/dev/null || die "SIPp uas did not start (port $UAS_PORT busy?): $(tail -3 "$1/uas.stderr")"
}
uas_stop() { stop_pid "$UAS_PID"; UAS_PID=""; }

UAC_PID=""
# start the uac in the background: DIR TARGET RATE CALLS HOLD_MS TIMEOUT_S [extra sipp args]
uac_start() {
	local dir=$1 target=$2 rate=$3 calls=$4 hold=$5 tmo=$6
	shift 6
	mkdir -p "$dir"
	(cd "$dir" && exec sipp "$target" -sf "$SCEN/uac.xml" "${SIPP_COMMON[@]}" -p "$UAC_PORT" \
		-r "$rate" -m "$calls" -d "$hold" -timeout "${tmo}s" -recv_timeout 5000 \
		-trace_rtt -rtt_freq 1 -trace_stat -fd 1 -trace_err -max_log_size 10000000 \
		-trace_screen "$@") >"$dir/uac.stdout" 2>"$dir/uac.stderr" &
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

tl_start() { # DIR MEDIA(0|1)
	local d=$1 media=$2 i media_section
	mkdir -p "$d"
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
	cat >"$RUN/trunkline.toml" <<EOF
# generated by load/bench.sh
[node]
id = "bench"

[sip]
udp = ["$HOST:$TL_PORT"]
tcp = []

[metrics]
listen = "$HOST:$TL_METRICS_PORT"

[admin]
listen = "$HOST:$TL_ADMIN_PORT"

[log]
level = "warn"

$media_section

[[trunks]]
name = "uas"
address = "$HOST:$UAS_PORT"
transport = "udp"

[routing]
default_trunk = "uas"
EOF
	cp "$RUN/trunkline.toml" "$d/trunkline.toml"
	"$TL_BIN_RESOLVED" --config "$RUN/trunkline.toml" >"$d/trunkline.log" 2>&1 &
	TL_PID=$!
	STARTED+=("$TL_PID")
	for i in $(seq 1 $((TL_READY_SECS * 10))); do
		curl -sf -o /dev/null "http://$HOST:$TL_METRICS_PORT/health" && break
		if ! kill -0 "$TL_PID" 2>/dev/null; then
			local rc=0
			wait "$TL_PID" || rc=$?
			TL_PID=""
			die "trunkline ($TL_BIN_RESOLVED --config $d/trunkline.toml) exited with status $rc before becoming ready. Last log lines:
$(tail -10 "$d/trunkline.log")"
		fi
		sleep 0.1
	done
	curl -sf -o /dev/null "http://$HOST:$TL_METRICS_PORT/health" ||
		die "trunkline did not answer http://$HOST:$TL_METRICS_PORT/health within ${TL_READY_SECS}s; see $d/trunkline.log"
	SUT_PIDS="$TL_PID"
	SUT_TARGET="$HOST:$TL_PORT"
}
tl_stop() { stop_pid "$TL_PID"; TL_PID=""; }

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
	case "$1" in
	sipp) SUT_PIDS="" SUT_TARGET="$HOST:$UAS_PORT" HELPER_PID="" HELPER_NAME="" ;;
	kamailio) kam_start "$2" topos ;;
	kamailio-dialog) kam_start "$2" dialog ;;
	kamailio-rtpengine) kam_start "$2" rtpengine ;;
	trunkline) tl_start "$2" 0 ;;
	trunkline-media) tl_start "$2" 1 ;;
	trunkline-watch10 | trunkline-listcalls) tl_start "$2" 0 ;;
	esac
}
sut_stop() {
	case "$1" in
	kamailio*) kam_stop ;;
	trunkline*) api_stop; tl_stop ;;
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
	trunkline | trunkline-watch10 | trunkline-listcalls)
		sut_api_collect "$1" "$2"
		curl -s -m 5 "http://$HOST:$TL_METRICS_PORT/metrics" >"$2/metrics.txt" 2>/dev/null || true
		;;
	kamailio*) kamcmd -s "$KAM_CTL" stats.get_statistics all >"$2/kamailio-stats.txt" 2>&1 || true ;;&
	kamailio-rtpengine) ng_sessions >"$2/rtpengine-sessions.txt" || true ;;
	esac
}
sut_tree() { [ -n "$SUT_PIDS" ] && python3 "$LIB" tree $SUT_PIDS || true; }

summary() { echo "$2=$3" >>"$OUT/$1/summary.env"; } # SYSTEM KEY VALUE

# ------------------------------------------------------------ phases
# one bounded rate-search step; returns 0 on pass
STEP_RESULT=""
run_step() { # SYSTEM RATE
	local sys=$1 rate=$2 d="$OUT/$1/search/step-$2" calls
	calls=$((rate * STEP_SECS))
	mkdir -p "$d"
	sut_start "$sys" "$d"
	uas_start "$d"
	sut_ready "$sys" "$d"
	uac_start "$d" "$SUT_TARGET" "$rate" "$calls" 0 $((STEP_SECS + 20))
	uac_wait || true
	sut_collect "$sys" "$d"
	uas_stop
	sut_stop "$sys"
	STEP_RESULT=$(python3 "$LIB" judge "$d" "$rate" "$STEP_SECS")
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
	local sys=$1 d="$OUT/$1/fixed" calls cpu0="" cpu1="" pids res hpids="" hcpu0="" hcpu1="" hname
	calls=$((FIXED_RATE * FIXED_SECS))
	log "$sys: fixed-rate run, $FIXED_RATE calls/s x ${FIXED_SECS}s (latency, CPU)"
	sut_start "$sys" "$d"
	uas_start "$d"
	sut_ready "$sys" "$d"
	pids=$(sut_tree)
	hname=$HELPER_NAME
	[ -n "$HELPER_PID" ] && hpids=$(python3 "$LIB" tree "$HELPER_PID")
	[ -n "$pids" ] && cpu0=$(python3 "$LIB" cpu $pids)
	[ -n "$hpids" ] && hcpu0=$(python3 "$LIB" cpu $hpids)
	local api0="" api1=""
	[ "${#API_PIDS[@]}" -gt 0 ] && api0=$(python3 "$LIB" cpu "${API_PIDS[@]}")
	uac_start "$d" "$SUT_TARGET" "$FIXED_RATE" "$calls" 0 $((FIXED_SECS + 20))
	uac_wait || true
	[ -n "$pids" ] && cpu1=$(python3 "$LIB" cpu $pids)
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
}

hold_run() { # SYSTEM — memory per established call
	local sys=$1 d="$OUT/$1/hold" pids base held est=0 created deadline hold_ms shm0="" shm1="" r0="" r1=""
	local last_est=-1 n=$HOLD_CALLS
	is_media "$sys" && n=$MEDIA_HOLD_CALLS
	log "$sys: holding $n calls (offered at $HOLD_RATE calls/s) for memory per call"
	sut_start "$sys" "$d"
	uas_start "$d"
	sleep 1
	pids=$(sut_tree)
	base=$(python3 "$LIB" pss $pids)
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
	echo "step_secs=$STEP_SECS"
	echo "bisect=$BISECT"
	echo "search_start=$SEARCH_START (SIPp direct: $SIPP_SEARCH_START), cap $SEARCH_MAX"
	echo "fixed_rate=$FIXED_RATE"
	echo "fixed_secs=$FIXED_SECS"
	echo "hold_calls=$HOLD_CALLS"
	echo "media_hold_calls=$MEDIA_HOLD_CALLS"
	echo "hold_rate=$HOLD_RATE"
	echo "media_ports=$MEDIA_PORT_MIN-$MEDIA_PORT_MAX"
	[ "$PROFILE" = 1 ] && echo "profile=$PROFILE_RATE calls/s x ${PROFILE_SECS}s, call graph $PROFILE_CALLGRAPH"
	echo "ports=uac $UAC_PORT, uas $UAS_PORT, kamailio $KAM_PORT, trunkline $TL_PORT (metrics $TL_METRICS_PORT, admin $TL_ADMIN_PORT), redis $REDIS_PORT, rtpengine ng $RTPE_NG_PORT"
	echo "admin_rows=$WATCHERS watchers; $LIST_HELD_CALLS held calls at $LIST_HELD_RATE calls/s, ListCalls page 500 once a second"
	echo "host=$(uname -srm), $(nproc) cpus, load avg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "sipp=$(sipp -v 2>&1 | grep -o 'SIPp v[^ ]*' | head -1)"
	echo "kamailio=$(kamailio -v 2>/dev/null | head -1 || true)"
	echo "rtpengine=$(rtpengine --version 2>&1 | head -1 || true)"
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

for s in "${SYS_LIST[@]}"; do
	if [ "$s" = sipp ]; then search sipp "$SIPP_SEARCH_START"; else search "$s" "$SEARCH_START"; fi
	fixed_run "$s"
	case "$s" in sipp | trunkline-watch10 | trunkline-listcalls) ;; *) hold_run "$s" ;; esac
done

log "done; results: $OUT/results.md"
echo
python3 "$LIB" report "$OUT" "${SYS_LIST[@]}"
