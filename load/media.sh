#!/usr/bin/env bash
# Side-by-side media-relay benchmark: the same RTP load (trunkline-rtpbench, sessions set up
# over the ng protocol) against
#   direct     no relay: the generator sends straight to its receiver (generator ceiling/floor)
#   rtpengine  Debian rtpengine, userspace only (table = -1)
#   trunkline  trunkline-relay, same flags/ports as rtpengine, userspace only (--table -1)
#   trunkline-kernel  trunkline-relay with kernel forwarding (--table 0, eBPF; needs root)
# one after the other in one run, on loopback.  See load/README.md, "Media benchmark".
#
#   load/media.sh [--quick] [--pin] [--systems direct,rtpengine,trunkline,trunkline-kernel]
#
# Every step starts a fresh relay, runs one bounded rtpbench (count and time), stops the relay.
# All children are stopped by PID on exit, error, Ctrl-C or TERM.  By default nothing is
# pinned: the generator and the relay share the machine's cores.  With --pin the relay runs
# on CPU 1 with one forwarding thread and the generator on CPU 0 (the same for both relays).
# Every run also measures the kernel floor: one loopback send plus one receive per packet on
# one thread, the least any userspace relay pays per forwarded packet on this machine.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")

usage() {
	sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
	cat <<'EOF'
Options:
  --quick            smoke run: 3 s steps, short ramp (~1-2 min)
  --pin              relay on CPU 1 with one forwarding thread, generator on CPU 0
  --systems LIST     comma-separated subset of direct,rtpengine,trunkline,trunkline-kernel
                     (default: all)
  -h, --help         this text
Environment (defaults full / quick):
  TRUNKLINE_RELAY_BIN  use this binary instead of `cargo build --release --bin trunkline-relay`
  RTPBENCH_BIN         use this generator instead of `cargo build --release -p trunkline-rtpbench`
  STEP_SECS          seconds of traffic per step (10 / 3)
  RAMP               streams per step, one-way 50 pps flows (bidirectional sessions = streams/2)
                     ("100 200 400 800 1200 1600 2000 2400 3000 3600 4000 4800" / "200 1000 2000 4000")
  LAT_STREAMS        streams of the fixed latency runs (500)
  LAT_RUNS           latency runs per system, interleaved across systems (7 / 1)
  LAT_SECS           seconds of traffic per latency run (5 / 3)
  LOSS_MAX_PCT       a step passes below this loss (0.1) ...
  PACE_MIN_PCT       ... and if the generator sent at >= this % of the offered rate (95)
  RETRY              re-run a failing step this many times before stopping the ramp (1 / 0)
  SEND_THREADS RECV_THREADS   generator threads (1 1)
  NG_PORT CLI_PORT PORT_MIN PORT_MAX   (12223 12224 30000 39999)
  FLOOR_PAIRS        socket pairs of the kernel-floor measurement (1000)
  PROG_STATS         1: time trunkline-kernel's eBPF program (kernel.bpf_stats_enabled, a
                     host-wide setting, on for the run and restored) (0)
EOF
}

# shellcheck source=load/lib.sh
. "$HERE/lib.sh"
parse_args "direct,rtpengine,trunkline,trunkline-kernel" "pin" "$@"

if [ "$QUICK" = 1 ]; then
	: "${STEP_SECS:=3}" "${RETRY:=0}" "${LAT_RUNS:=1}" "${LAT_SECS:=3}"
	: "${RAMP:=200 1000 2000 4000}"
else
	: "${STEP_SECS:=10}" "${RETRY:=1}" "${LAT_RUNS:=7}" "${LAT_SECS:=5}"
	: "${RAMP:=100 200 400 800 1200 1600 2000 2400 3000 3600 4000 4800}"
fi
: "${LAT_STREAMS:=500}" "${LOSS_MAX_PCT:=0.1}" "${PACE_MIN_PCT:=95}" "${SEND_THREADS:=1}" "${RECV_THREADS:=1}"
: "${NG_PORT:=12223}" "${CLI_PORT:=12224}" "${PORT_MIN:=30000}" "${PORT_MAX:=39999}"
: "${RELAY_READY_SECS:=10}"
: "${FLOOR_PAIRS:=1000}" "${PROG_STATS:=0}"
HOST=127.0.0.1
# --pin: the relay gets CPU 1 and one forwarding thread, the generator CPU 0.
RELAY_PRE=() GEN_PRE=() RELAY_THREADS=2
if [ "$PIN" = 1 ]; then
	[ "$(nproc)" -ge 2 ] || { echo "--pin needs at least 2 CPUs" >&2; exit 2; }
	command -v taskset >/dev/null || { echo "--pin needs taskset (util-linux)" >&2; exit 2; }
	RELAY_PRE=(taskset -c 1) GEN_PRE=(taskset -c 0) RELAY_THREADS=1
fi

out_dir media.log

# ------------------------------------------------------------ tools
command -v python3 >/dev/null || die "python3 is required (standard library only)"
if [ -n "${RTPBENCH_BIN:-}" ]; then
	RB=$RTPBENCH_BIN
else
	log "building trunkline-rtpbench (cargo build --release -p trunkline-rtpbench)"
	(cd "$ROOT" && cargo build --release -p trunkline-rtpbench) >"$OUT/build-rtpbench.log" 2>&1 ||
		die "rtpbench build failed: $(tail -5 "$OUT/build-rtpbench.log")"
	RB="$ROOT/target/release/trunkline-rtpbench"
fi
[ -x "$RB" ] || die "no rtpbench binary at $RB"

declare -A UNAVAILABLE=()
for s in "${SYS_LIST[@]}"; do
	case "$s" in
	rtpengine) command -v rtpengine >/dev/null || UNAVAILABLE[rtpengine]="rtpengine not installed (apt-get install --no-install-recommends rtpengine-daemon)" ;;
	trunkline | trunkline-kernel)
		if [ -n "${TLR:-}" ]; then
			:
		elif [ -n "${TRUNKLINE_RELAY_BIN:-}" ]; then
			TLR=$TRUNKLINE_RELAY_BIN
		else
			log "building trunkline-relay (cargo build --release --bin trunkline-relay)"
			if (cd "$ROOT" && cargo build --release --bin trunkline-relay) >"$OUT/build-relay.log" 2>&1; then
				TLR="$ROOT/target/release/trunkline-relay"
			else
				TLR=""
				UNAVAILABLE[$s]="build failed: $(tail -3 "$OUT/build-relay.log" | tr '\n' ' ')"
			fi
		fi
		[ -z "${UNAVAILABLE[$s]:-}" ] && [ ! -x "$TLR" ] && UNAVAILABLE[$s]="no binary at $TLR"
		;;
	esac
done

# ng ping over UDP: exit 0 when the relay answers
ng_ping() {
	python3 - "$HOST" "$NG_PORT" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.3)
try:
    s.sendto(b"mediash_ping d7:command4:pinge", (sys.argv[1], int(sys.argv[2])))
    data, _ = s.recvfrom(65536)
    sys.exit(0 if data.startswith(b"mediash_ping ") and b"pong" in data else 1)
except OSError:
    sys.exit(1)
EOF
}

# ------------------------------------------------------------ relays
RELAY_PID=""
relay_start() { # SYSTEM DIR -> RELAY_PID, or returns 1 with the reason in $DIR/start-error
	local sys=$1 dir=$2 i
	mkdir -p "$dir"
	case "$sys" in
	rtpengine)
		cat >"$dir/rtpengine.conf" <<EOF
# generated by load/media.sh: userspace-only rtpengine, private ports
[rtpengine]
table = -1
interface = $HOST
listen-ng = $HOST:$NG_PORT
listen-cli = $HOST:$CLI_PORT
foreground = true
log-stderr = true
log-level = 5
port-min = $PORT_MIN
port-max = $PORT_MAX
timeout = 60
silent-timeout = 3600
num-threads = $RELAY_THREADS
delete-delay = 0
pidfile = $dir/rtpengine.pid
EOF
		"${RELAY_PRE[@]}" rtpengine --config-file="$dir/rtpengine.conf" >"$dir/relay.log" 2>&1 &
		;;
	trunkline | trunkline-kernel)
		local table=-1
		[ "$sys" = trunkline-kernel ] && table=0
		"${RELAY_PRE[@]}" "$TLR" --interface "$HOST" --listen-ng "$HOST:$NG_PORT" --port-min "$PORT_MIN" \
			--port-max "$PORT_MAX" --timeout 60 --num-threads "$RELAY_THREADS" --table "$table" \
			--foreground >"$dir/relay.log" 2>&1 &
		;;
	esac
	RELAY_PID=$!
	STARTED+=("$RELAY_PID")
	for i in $(seq 1 $((RELAY_READY_SECS * 5))); do
		if ! kill -0 "$RELAY_PID" 2>/dev/null; then
			echo "exited during start-up: $(tail -3 "$dir/relay.log" | tr '\n' ' ')" >"$dir/start-error"
			RELAY_PID=""
			return 1
		fi
		ng_ping && return 0
		sleep 0.2
	done
	echo "no ng pong on $HOST:$NG_PORT within ${RELAY_READY_SECS}s: $(tail -3 "$dir/relay.log" | tr '\n' ' ')" >"$dir/start-error"
	stop_pid "$RELAY_PID"
	RELAY_PID=""
	return 1
}
relay_stop() { stop_pid "$RELAY_PID"; RELAY_PID=""; }

# one measured step: SYSTEM DIR STREAMS -> DIR/step.json (+ rtpbench.log, relay.log)
run_step() { # SYSTEM DIR STREAMS [SECONDS, default STEP_SECS]
	local sys=$1 dir=$2 streams=$3 secs=${4:-$STEP_SECS} sessions args=()
	sessions=$(((streams + 1) / 2))
	mkdir -p "$dir"
	args=(--streams "$sessions" --both-directions --duration "$secs" --pps-per-stream 50
		--local-ip "$HOST" --send-threads "$SEND_THREADS" --recv-threads "$RECV_THREADS"
		--json --label "$sys/$streams")
	if [ "$sys" = direct ]; then
		args+=(--direct)
	else
		if ! relay_start "$sys" "$dir"; then
			printf '{"label":"%s/%s","error":"relay start: %s"}\n' "$sys" "$streams" \
				"$(sed 's/["\\]/ /g' "$dir/start-error")" >"$dir/step.json"
			return 0
		fi
		args+=(--ng "$HOST:$NG_PORT" --relay-pid "$RELAY_PID")
	fi
	# bounded: the tool stops after STEP_SECS of traffic; the timeout covers set-up/teardown
	timeout --signal=TERM --kill-after=5 $((secs * 3 + 60)) "${GEN_PRE[@]}" "$RB" "${args[@]}" \
		>"$dir/step.json" 2>"$dir/rtpbench.log" || true
	[ -s "$dir/step.json" ] || printf '{"label":"%s/%s","error":"rtpbench produced no summary (see rtpbench.log)"}\n' "$sys" "$streams" >"$dir/step.json"
	[ "$sys" = trunkline-kernel ] && bpf_prog_stats "$RELAY_PID" >"$dir/bpf_prog.txt"
	[ "$sys" = direct ] || relay_stop
}

step_verdict() { # DIR -> prints "pass" / "fail <reason>"
	python3 - "$1/step.json" "$LOSS_MAX_PCT" "$PACE_MIN_PCT" <<'EOF'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception as e:
    print(f"fail unreadable summary ({e})"); sys.exit()
if "error" in d:
    print("fail " + d["error"][:200]); sys.exit()
if d["loss_pct"] >= float(sys.argv[2]):
    print(f"fail loss {d['loss_pct']:.3f} %"); sys.exit()
if d["achieved_send_pps"] < float(sys.argv[3]) / 100 * d["offered_pps"]:
    print(f"fail generator fell behind (sent {d['achieved_send_pps']:.0f} of {d['offered_pps']:.0f} pps)"); sys.exit()
print("pass")
EOF
}

# ------------------------------------------------------------ run
sessions_max=$(((PORT_MAX - PORT_MIN + 1) / 4)) # RTP+RTCP on both sides of every session
{
	echo "STAMP=$STAMP QUICK=$QUICK PIN=$PIN RELAY_THREADS=$RELAY_THREADS FLOOR_PAIRS=$FLOOR_PAIRS SYSTEMS=$SYSTEMS STEP_SECS=$STEP_SECS RETRY=$RETRY"
	echo "RAMP=\"$RAMP\" LAT_STREAMS=$LAT_STREAMS LAT_RUNS=$LAT_RUNS LAT_SECS=$LAT_SECS LOSS_MAX_PCT=$LOSS_MAX_PCT PACE_MIN_PCT=$PACE_MIN_PCT"
	echo "SEND_THREADS=$SEND_THREADS RECV_THREADS=$RECV_THREADS NG_PORT=$NG_PORT PORT_MIN=$PORT_MIN PORT_MAX=$PORT_MAX"
	echo "RTPBENCH=$RB TRUNKLINE_RELAY=${TLR:-} rtpengine=$(rtpengine --version 2>&1 | head -1 || true)"
	echo "nproc=$(nproc) loadavg=$(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/params.env"
if [ "$PIN" = 1 ]; then
	PLACEMENT="pinned: relay on CPU 1 with one forwarding thread, generator on CPU 0"
else
	PLACEMENT="nothing pinned: generator and relay ($RELAY_THREADS forwarding threads) share the cores"
fi
# The kernel path's own cost, with PROG_STATS=1: kernel.bpf_stats_enabled makes the kernel
# time every run of an eBPF program, and /proc/PID/fdinfo of the relay's program descriptor
# shows the sums. The timing itself costs two clock reads per run, counted in the figure
# (an upper bound), and it is a host-wide setting, so it is off unless asked for, and on
# for the run only, restored on exit.
BPF_STATS=/proc/sys/kernel/bpf_stats_enabled
if [ "$PROG_STATS" = 1 ] && [[ ",$SYSTEMS," == *",trunkline-kernel,"* ]] && [ -w "$BPF_STATS" ]; then
	BPF_STATS_WAS=$(cat "$BPF_STATS")
	echo 1 >"$BPF_STATS"
	ON_EXIT+=("echo $BPF_STATS_WAS >$BPF_STATS")
fi
bpf_prog_stats() { # PID -> "run_time_ns N run_cnt M" of its eBPF program(s), summed
	local f t=0 c=0 v
	for f in /proc/"$1"/fdinfo/*; do
		grep -q '^prog_type:' "$f" 2>/dev/null || continue
		v=$(awk '$1 == "run_time_ns:" {print $2}' "$f"); t=$((t + ${v:-0}))
		v=$(awk '$1 == "run_cnt:" {print $2}' "$f"); c=$((c + ${v:-0}))
	done
	echo "run_time_ns $t run_cnt $c"
}
log "output: $OUT  (nproc $(nproc), load $(cut -d' ' -f1-3 /proc/loadavg); $PLACEMENT)"

# The kernel floor, on the relay's CPU when pinned: what one thread pays per packet for
# the bare loopback send and receive, with no relay logic, polling or wake-ups.
mkdir -p "$OUT/floor"
timeout --signal=TERM --kill-after=5 $((STEP_SECS + 60)) "${RELAY_PRE[@]}" "$RB" --floor \
	--streams "$FLOOR_PAIRS" --duration "$STEP_SECS" --local-ip "$HOST" --json --label floor \
	>"$OUT/floor/step.json" 2>"$OUT/floor/rtpbench.log" || true
log "kernel floor: $(tail -1 "$OUT/floor/rtpbench.log")"

for sys in "${SYS_LIST[@]}"; do
	if [ -n "${UNAVAILABLE[$sys]:-}" ]; then
		log "$sys: UNAVAILABLE: ${UNAVAILABLE[$sys]}"
		mkdir -p "$OUT/$sys"
		echo "${UNAVAILABLE[$sys]}" >"$OUT/$sys/unavailable"
		continue
	fi
	if [ "$sys" != direct ]; then # pre-flight: starts and answers ng ping
		if ! relay_start "$sys" "$OUT/$sys/preflight"; then
			UNAVAILABLE[$sys]=$(cat "$OUT/$sys/preflight/start-error")
			log "$sys: UNAVAILABLE: ${UNAVAILABLE[$sys]}"
			echo "${UNAVAILABLE[$sys]}" >"$OUT/$sys/unavailable"
			continue
		fi
		# Without the kernel's consent trunkline-kernel would quietly measure user space.
		if [ "$sys" = trunkline-kernel ] && ! grep -q "kernel forwarding enabled" "$OUT/$sys/preflight/relay.log"; then
			UNAVAILABLE[$sys]="kernel forwarding refused: $(grep -m1 'kernel forwarding unavailable' "$OUT/$sys/preflight/relay.log" | cut -c1-200)"
			log "$sys: UNAVAILABLE: ${UNAVAILABLE[$sys]}"
			echo "${UNAVAILABLE[$sys]}" >"$OUT/$sys/unavailable"
			relay_stop
			continue
		fi
		relay_stop
	fi
	for streams in $RAMP; do
		if [ $(((streams + 1) / 2)) -gt "$sessions_max" ]; then
			log "$sys: ramp stops at $streams streams: more sessions than the port range $PORT_MIN-$PORT_MAX holds"
			break
		fi
		verdict=""
		for attempt in $(seq 0 "$RETRY"); do
			dir="$OUT/$sys/ramp/streams-$streams"
			[ "$attempt" -gt 0 ] && dir="$dir-retry$attempt"
			run_step "$sys" "$dir" "$streams"
			verdict=$(step_verdict "$dir")
			log "$sys: $streams streams ($((streams * 50)) pps offered): $verdict$([ "$attempt" -gt 0 ] && echo " (retry $attempt)")"
			[ "$verdict" = pass ] && break
		done
		[ "$verdict" = pass ] || break
	done
done

# Latency: LAT_RUNS rounds, each system once per round, so slow phases of the host (other
# guests, its scheduler) fall on every system alike; the report takes the median p99. Each
# round starts one system further along the list, so no system always runs right after
# the same other one.
for round in $(seq 1 "$LAT_RUNS"); do
	n=${#SYS_LIST[@]}
	for ((k = 0; k < n; k++)); do
		sys=${SYS_LIST[$(((round - 1 + k) % n))]}
		[ -n "${UNAVAILABLE[$sys]:-}" ] && continue
		run_step "$sys" "$OUT/$sys/latency-$round" "$LAT_STREAMS" "$LAT_SECS"
		log "$sys: latency run $round/$LAT_RUNS, $LAT_STREAMS streams: $(step_verdict "$OUT/$sys/latency-$round")"
	done
done

# ------------------------------------------------------------ report
python3 - "$OUT" "$LOSS_MAX_PCT" "$LAT_STREAMS" "$SYSTEMS" "$PACE_MIN_PCT" <<'EOF' | tee "$OUT/table.md"
import glob, json, os, re, sys
out, loss_max, lat_streams, systems = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(",")
pace = float(sys.argv[5]) / 100
names = {"direct": "generator direct, no relay (reference: generator ceiling / latency floor)",
         "rtpengine": "rtpengine (Debian, userspace, table = -1)",
         "trunkline": "trunkline-relay, userspace (--table -1)",
         "trunkline-kernel": "trunkline-relay, kernel forwarding (--table 0, eBPF)"}
# Added cores: what the whole path costs beyond the generator alone at the same load —
# generator + relay CPU minus the generator's CPU in the direct run at the same step. It
# counts work a relay makes other processes do (wake-ups, and kernel forwarding, which runs
# in softirq context charged to the sending generator) that relay CPU alone misses.
RESOLUTION = 0.05  # cores; below this an added cost is not told apart from run-to-run noise
def load(p):
    try: return json.load(open(p))
    except Exception: return None
def ok(d):
    return bool(d) and "error" not in d and d["loss_pct"] < loss_max and d["achieved_send_pps"] >= pace * d["offered_pps"]
rows, per_step, res, res_added = [], [], {}, {}
def steps_of(s):
    steps = []
    for p in glob.glob(os.path.join(out, s, "ramp", "streams-*", "step.json")):
        m = re.search(r"streams-(\d+)(-retry\d+)?/", p)
        steps.append((int(m.group(1)), p, load(p)))
    steps.sort(key=lambda x: (x[0], x[1]))
    return steps
direct_gen = {}
for n, p, d in steps_of("direct"):
    if ok(d): direct_gen[n] = d["generator_cores"]
def added(d):
    n = d["flows"]
    if n not in direct_gen or d.get("relay_cores") is None: return None
    return d["generator_cores"] + (d.get("relay_cores") or 0.0) - direct_gen[n]
def added_cell(a, pps):
    if a is None: return "—", "—"
    if a < RESOLUTION: return f"{a:.2f} (< {RESOLUTION})", f"> {pps / RESOLUTION:.0f}"
    return f"{a:.2f}", f"{pps / a:.0f}"
def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else None
def p99s(s):
    """Median over a system's latency runs of (p99 to arrival on the receiving socket,
    p99 end to end), the arrival p99s of every run, and whether any run was lossy."""
    runs = [d for d in (load(p) for p in sorted(glob.glob(os.path.join(out, s, "latency-*", "step.json"))))
            if d and "error" not in d]
    arr = [a for a in ((d.get("arrival_latency_us") or {}).get("p99") for d in runs) if a is not None]
    e2e = [d["latency_us"]["p99"] for d in runs if d["latency_us"]["p99"] is not None]
    return median(arr), median(e2e), arr, any(not ok(d) for d in runs)
direct_arr, direct_e2e, _, _ = p99s("direct")
def lat_cell(s):
    arr, e2e, runs, lossy = p99s(s)
    if arr is None and e2e is None: return "—"
    cell = f"{arr}" if arr is not None else "—"
    if arr is not None and direct_arr is not None: cell += f" (+{arr - direct_arr})"
    cell += f" / {e2e}"
    if e2e is not None and direct_e2e is not None: cell += f" (+{e2e - direct_e2e})"
    if len(runs) > 1: cell += f"; arrival p99 of each run: {', '.join(map(str, runs))}"
    return cell + (" (lossy)" if lossy else "")
for s in systems:
    un = os.path.join(out, s, "unavailable")
    if os.path.exists(un):
        rows.append(f"| {names[s]} | unavailable: {open(un).read().strip()[:120]} | | | | |"); continue
    steps = steps_of(s)
    best = None
    for n, p, d in steps:
        if ok(d) and (best is None or d["forwarded_pps"] > best["forwarded_pps"]): best = d
        if d and "error" not in d:
            lat = d["latency_us"]
            arr = d.get("arrival_latency_us") or {}
            per_step.append(f"| {s} | {n} | {d['offered_pps']:.0f} | {d['forwarded_pps']:.0f} | {d['loss_pct']:.3f} | "
                            f"{d['achieved_send_pps'] / d['offered_pps'] * 100:.1f} | {arr.get('p50')} | {arr.get('p99')} | "
                            f"{lat['p50']} | {lat['p99']} | {lat['max']} | "
                            f"{d['generator_cores']:.2f} | {'' if d['relay_cores'] is None else format(d['relay_cores'], '.2f')} | "
                            f"{'' if s == 'direct' else added_cell(added(d), d['forwarded_pps'])[0]} | "
                            f"{'pass' if ok(d) else 'FAIL'} |")
        else:
            per_step.append(f"| {s} | {n} | | | | | | | | | | | | | {(d or {}).get('error', 'no summary')[:80]} |")
    p99 = lat_cell(s)
    if best is None:
        rows.append(f"| {names[s]} | none passed | | | | | {p99} | |"); continue
    cores = best.get("relay_cores")
    # Near-zero relay CPU (kernel forwarding) says nothing about the cost: see added cores.
    ppc = best["forwarded_pps"] / cores if cores and cores >= RESOLUTION else None
    a = None if s == "direct" else added(best)
    a_cell, ppa_cell = added_cell(a, best["forwarded_pps"])
    res[s] = ppc
    res_added[s] = (a, best["forwarded_pps"])
    rows.append(f"| {names[s]} | {best['forwarded_pps']:.0f} ({best['flows']} streams) | "
                f"{'—' if cores is None else format(cores, '.2f')} | {'—' if ppc is None else format(ppc, '.0f')} | "
                f"{a_cell} | {ppa_cell} | "
                f"{p99} | {'—' if ppc is None else format(ppc / 50, '.0f')} |")
print(f"| system | max pps at <{loss_max}% loss | relay cores used | pps per relay core | added cores (all − direct at that load) | pps per added core | median p99 latency µs at {lat_streams} streams: to arrival (added) / end to end (added) | 50 pps streams per relay core |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
print("\n".join(rows))
print()
if res.get("trunkline") and res.get("rtpengine"):
    r = res["trunkline"] / res["rtpengine"]
    print(f"**trunkline (userspace) / rtpengine pps per relay core: {r:.2f}** (target ≥ 2.00: {'met' if r >= 2 else 'NOT met'})")
else:
    print("trunkline / rtpengine pps per relay core: n/a (both systems must be measured)")
ra, rp = res_added.get("rtpengine", (None, None))
for s in ("trunkline", "trunkline-kernel"):
    sa, sp = res_added.get(s, (None, None))
    if ra is None or sa is None or ra < RESOLUTION:
        continue
    if sa < RESOLUTION:
        print(f"**{s} / rtpengine pps per added core: > {(sp / RESOLUTION) / (rp / ra):.1f}** ({s} adds under {RESOLUTION} cores at "
              f"{sp:.0f} pps, rtpengine {ra:.2f} cores at {rp:.0f} pps; target ≥ 2.00: met)")
    else:
        r = (sp / sa) / (rp / ra)
        print(f"**{s} / rtpengine pps per added core: {r:.2f}** (target ≥ 2.00: {'met' if r >= 2 else 'NOT met'})")
for s in [x for x in systems if x != "direct"]:
    arr, e2e, _, _ = p99s(s)
    if arr is None or direct_arr is None:
        print(f"{s} p99 added latency at {lat_streams} streams: n/a (needs the {s} and direct latency runs)")
        continue
    added = arr - direct_arr
    verdict = f" (target < 200 µs: {'met' if added < 200 else 'NOT met'})" if s.startswith("trunkline") else ""
    print(f"{s} p99 added latency at {lat_streams} streams (median of the runs): **{added} µs**{verdict}: p99 send-to-arrival {arr} µs through the relay, "
          f"{direct_arr} µs direct; end to end (receiver's own wake-up included) {e2e} µs against {direct_e2e} µs")
def bpf_stats(d):
    """(ns per program run, program ns per forwarded packet, program cores) of a
    trunkline-kernel step, from the relay's fdinfo; None without kernel.bpf_stats_enabled."""
    try:
        f = open(os.path.join(out, "trunkline-kernel", "ramp", f"streams-{d['flows']}", "bpf_prog.txt")).read().split()
        t, c = int(f[1]), int(f[3])
    except Exception:
        return None
    if c == 0 or t == 0 or not d.get("received"): return None
    return t / c, t / d["received"], t / 1e9 / d["send_wall_s"]
kb = max([x for x in [load(p) for p in glob.glob(os.path.join(out, "trunkline-kernel", "ramp", "streams-*", "step.json"))] if ok(x)],
         key=lambda x: x["forwarded_pps"], default=None)
st = bpf_stats(kb)
if st:
    print(f"trunkline-kernel program time at {kb['forwarded_pps']:.0f} pps (PROG_STATS=1, kernel.bpf_stats_enabled; an upper bound, "
          f"the timing's own clock reads included): {st[0]:.0f} ns per run, "
          f"{st[1]:.0f} ns per forwarded packet (every run on the hooked interfaces, misses included), {st[2]:.3f} cores: "
          f"{kb['forwarded_pps'] / st[2] if st[2] else float('inf'):.0f} pps per core of program time")
    rp = res_added.get("rtpengine", (None, None))
    if res.get("rtpengine") and st[2]:
        ppc_prog = kb["forwarded_pps"] / st[2]
        print(f"**trunkline-kernel / rtpengine, pps per core of program time against rtpengine's pps per relay core: "
              f"{ppc_prog / res['rtpengine']:.1f}**" + (f"; against its pps per added core: {ppc_prog / (rp[1] / rp[0]):.1f}"
              if rp[0] and rp[0] >= RESOLUTION else "") + " (target ≥ 2.00)")
elif kb:
    print("trunkline-kernel program time: not measured (PROG_STATS=1 times it)")
fl = load(os.path.join(out, "floor", "step.json"))
if fl and "error" not in fl and fl.get("pps_per_core"):
    f = fl["pps_per_core"]
    print(f"kernel floor: {f:.0f} pps per core ({fl['us_per_packet']:.2f} µs per packet: one loopback send + one receive, "
          f"{fl['pairs']} socket pairs, one thread, no polling or wake-ups), the most any userspace relay can forward per core here.")
    for s in ("rtpengine", "trunkline"):
        if res.get(s): print(f"- {s} reaches {res[s] / f * 100:.0f} % of the floor")
    if res.get("rtpengine"):
        print(f"- the highest trunkline / rtpengine ratio a userspace relay could reach here: {f / res['rtpengine']:.2f}")
else:
    print("kernel floor: not measured (see floor/rtpbench.log)")
d = {s: max([x for x in [load(p) for p in glob.glob(os.path.join(out, s, 'ramp', '*', 'step.json'))] if ok(x)],
            key=lambda x: x["forwarded_pps"], default=None) for s in ("direct",)}
if d.get("direct"):
    print(f"generator ceiling (direct): {d['direct']['forwarded_pps']:.0f} pps; a relay whose max comes close to it is limited by the generator, not itself.")
print()
print("### Per step")
print()
print("| system | streams | offered pps | forwarded pps | loss % | sent % of offered | arrival p50 µs | arrival p99 µs | end-to-end p50 µs | end-to-end p99 µs | max µs | generator cores | relay cores | added cores | verdict |")
print("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
print("\n".join(per_step))
EOF

{
	echo "# Media benchmark $STAMP"
	echo
	echo "Parameters: \`$(tr '\n' ' ' <"$OUT/params.env")\`"
	echo
	echo "Streams are one-way 50 pps flows of 172-byte PCMU RTP; sessions are bidirectional (2 streams each)."
	echo "Placement: $PLACEMENT ($(nproc) cores)."
	echo "Relay cores = relay CPU seconds (/proc/PID/stat utime+stime, all threads) over the step ÷ wall seconds."
	echo "Added cores = generator cores + relay cores − the generator's cores in the direct run at the same step: the"
	echo "path's whole cost, including work a relay leaves to other processes (wake-ups; kernel forwarding runs in"
	echo "softirq context, charged to the sending generator, so its relay cores are near 0). Below 0.05 it is noise."
	echo "Latency: *to arrival* = the kernel's receive stamp (SO_TIMESTAMPNS) at the receiving socket minus the send time,"
	echo "what the path in between added; *end to end* = when the receiving thread holds the packet, which adds the"
	echo "generator's own wake-up. *Added* = the relay's p99 minus the direct path's p99 in the same run."
	echo
	cat "$OUT/table.md"
	echo
	echo "Raw files: \`<system>/ramp/streams-N/{step.json,rtpbench.log,relay.log,rtpengine.conf}\`, \`<system>/latency-R/\`, \`media.log\`."
} >"$OUT/media-results.md"
log "results: $OUT/media-results.md"
for s in "${SYS_LIST[@]}"; do [ -n "${UNAVAILABLE[$s]:-}" ] && exit 2; done
exit 0
