# Sourced by the tests/media scripts: process control and the relay under test.
#
#   RELAY=rtpengine (default) | trunkline     which ng relay to start
#   RELAY=none                                use one already running on $NG
#   TRUNKLINE_RELAY_BIN                       trunkline-relay binary (default: target/release/
#                                             trunkline-relay, built with cargo if missing)
#   NG=127.0.0.1:22223  PORT_MIN=40000  PORT_MAX=40999   (private defaults: the usual
#   127.0.0.1:2223 may be in use by another run; NG=127.0.0.1:2223 to match the docs)
# Both relays are started with the same settings: interface 127.0.0.1, ng on $NG, media ports
# PORT_MIN..PORT_MAX, timeout 60 s, foreground.

MEDIA_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$MEDIA_DIR/../.." && pwd)
: "${RELAY:=rtpengine}" "${NG:=127.0.0.1:22223}" "${PORT_MIN:=40000}" "${PORT_MAX:=40999}"
NG_HOST=${NG%:*}
NG_PORT=${NG##*:}

STARTED=()
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }
stop_pid() {
	local pid=$1 i
	[ -n "$pid" ] || return 0
	kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}
cleanup() {
	local rc=$? i
	trap - EXIT INT TERM
	for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do stop_pid "${STARTED[$i]}"; done
	exit "$rc"
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM

# relay_start DIR: starts $RELAY, waits for an ng pong
relay_start() {
	local dir=$1 i
	mkdir -p "$dir"
	case "$RELAY" in
	rtpengine)
		command -v rtpengine >/dev/null || die "rtpengine not installed (apt-get install --no-install-recommends rtpengine-daemon)"
		cat >"$dir/rtpengine.conf" <<EOC
[rtpengine]
table = -1
interface = 127.0.0.1
listen-ng = $NG
foreground = true
log-stderr = true
log-level = 6
port-min = $PORT_MIN
port-max = $PORT_MAX
timeout = 60
num-threads = 2
delete-delay = 0
pidfile = $dir/rtpengine.pid
EOC
		rtpengine --config-file="$dir/rtpengine.conf" >"$dir/relay.log" 2>&1 &
		;;
	trunkline)
		local bin=${TRUNKLINE_RELAY_BIN:-$ROOT/target/release/trunkline-relay}
		if [ -z "${TRUNKLINE_RELAY_BIN:-}" ]; then
			(cd "$ROOT" && cargo build --release --bin trunkline-relay) >"$dir/build.log" 2>&1 ||
				die "trunkline-relay build failed (see $dir/build.log)"
		fi
		"$bin" --interface 127.0.0.1 --listen-ng "$NG" --port-min "$PORT_MIN" --port-max "$PORT_MAX" \
			--timeout 60 --foreground >"$dir/relay.log" 2>&1 &
		;;
	none) ;;
	*) die "RELAY must be rtpengine, trunkline or none" ;;
	esac
	if [ "$RELAY" != none ]; then
		RELAY_PID=$!
		STARTED+=("$RELAY_PID")
	fi
	for i in $(seq 1 50); do
		python3 "$MEDIA_DIR/ngctl.py" --ng "$NG" ping >/dev/null 2>&1 && { log "relay $RELAY answers ng on $NG"; return 0; }
		[ "$RELAY" = none ] || kill -0 "$RELAY_PID" 2>/dev/null || die "relay exited: $(tail -3 "$dir/relay.log")"
		sleep 0.2
	done
	die "relay $RELAY: no ng pong on $NG"
}
