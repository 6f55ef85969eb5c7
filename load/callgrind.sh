#!/usr/bin/env bash
# Instructions the node executes per anchored call, counted by callgrind: a figure that does
# not move with the host's load the way CPU seconds do (on a shared two-core host those spread
# by about ±10 % between runs), so a change to the per-call work can be judged from one run
# before and one after. Kernel work (syscalls, wake-ups) is not counted; load/bench.sh is the
# judge of CPU and calls/s.
#
# The node runs in its default configuration (media anchored) under
# `valgrind --tool=callgrind` on loopback, with SIPp as caller and callee (every call: INVITE
# with SDP, 100/180/200 with SDP, ACK, BYE, 200). After WARM calls the counters are zeroed,
# CALLS calls are placed at RATE calls/s, and the counters are dumped; the script prints
# instructions per call and the top inclusive entries, and keeps the callgrind file in
# load/out/<timestamp>/callgrind/ for callgrind_annotate.
#
#   load/callgrind.sh
#   CALLS=800 RATE=40 TRUNKLINE_BIN=target/release/trunkline load/callgrind.sh
#
# Needs valgrind (Debian: apt-get install -y valgrind) and sip-tester (SIPp). Uses
# 127.0.0.1 ports 5062 (node), 5070 (caller), 5090 (callee), 9465/9466 (metrics, admin).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
BIN=${TRUNKLINE_BIN:-$ROOT/target/release/trunkline}
CALLS=${CALLS:-400}
RATE=${RATE:-40}
WARM=${WARM:-100}
SCEN=$HERE/scenarios
OUT=$HERE/out/$(date +%Y%m%d-%H%M%S)/callgrind
mkdir -p "$OUT"
for tool in valgrind callgrind_control callgrind_annotate sipp curl; do
	command -v "$tool" >/dev/null || { echo "callgrind.sh: $tool is not installed" >&2; exit 2; }
done
[ -x "$BIN" ] || { echo "callgrind.sh: no node binary at $BIN (cargo build --release -p trunkline)" >&2; exit 2; }
for port in 5062 5070 5090; do
	if ss -Huan "sport = :$port" | grep -q .; then
		echo "callgrind.sh: UDP port $port is already in use; stop what holds it first" >&2
		exit 2
	fi
done

cat >"$OUT/trunkline.toml" <<'EOF'
[node]
id = "callgrind"
[sip]
udp = ["127.0.0.1:5062"]
tcp = []
[metrics]
listen = "127.0.0.1:9465"
[admin]
listen = "127.0.0.1:9466"
[log]
level = "warn"
[[trunks]]
name = "uas"
address = "127.0.0.1:5090"
transport = "udp"
[routing]
default_trunk = "uas"
EOF

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" \
	"$BIN" --config "$OUT/trunkline.toml" >"$OUT/node.log" 2>&1 &
NODE=$!
PIDS+=("$NODE")
for _ in $(seq 300); do
	curl -sf -o /dev/null http://127.0.0.1:9465/health && break
	kill -0 "$NODE" 2>/dev/null || { echo "callgrind.sh: the node exited; see $OUT/node.log" >&2; exit 1; }
	sleep 0.2
done
curl -sf -o /dev/null http://127.0.0.1:9465/health || { echo "callgrind.sh: the node did not come up" >&2; exit 1; }

sipp -sf "$SCEN/uas.xml" -i 127.0.0.1 -p 5090 -nostdin -default_behaviors all,-abortunexp \
	-buff_size 4194304 >"$OUT/uas.log" 2>&1 &
PIDS+=("$!")
sleep 0.5

uac() { # COUNT RATE CSV
	timeout $((${1} / ${2} + 60)) sipp 127.0.0.1:5062 -sf "$SCEN/uac.xml" -i 127.0.0.1 -p 5070 \
		-nostdin -default_behaviors all,-abortunexp -buff_size 4194304 -r "$2" -m "$1" \
		-timeout $((${1} / ${2} + 50))s -trace_stat -stf "$3" >/dev/null 2>&1 || true
}
uac "$WARM" 20 "$OUT/warm.csv"
sleep 1
callgrind_control -z "$NODE" >/dev/null 2>&1
uac "$CALLS" "$RATE" "$OUT/calls.csv"
sleep 1
callgrind_control -d "$NODE" >/dev/null 2>&1
sleep 1

ok=$(python3 - "$OUT/calls.csv" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1]), delimiter=';'))
print(rows[-1][rows[0].index('SuccessfulCall(C)')])
PY
)
dump=$(ls "$OUT"/callgrind.out.* | head -1)
total=$(awk '/^totals:/{print $2}' "$dump")
echo "calls completed: $ok of $CALLS"
echo "node instructions per call: $((total / CALLS))"
callgrind_annotate --inclusive=yes --threshold=99 --auto=no "$dump" 2>/dev/null |
	grep -E '^ *[0-9,]+ \(' | grep -F '[' | grep -E 'trunkline_|mi_malloc|memcpy' | sed 's| \[[^]]*\]$||' | head -20 | tee "$OUT/top.txt"
echo "callgrind file: $dump"
[ "$ok" = "$CALLS" ] || { echo "callgrind.sh: not every call completed; the figure is not comparable" >&2; exit 1; }
