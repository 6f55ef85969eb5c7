#!/usr/bin/env bash
# Takeover time of a trunkline cluster: three clustered nodes (127.0.0.11, .12, .13, one etcd on
# 127.0.0.1), CALLS SIPp calls (1000) placed through 127.0.0.11 at RATE calls/s and held; once
# .11 reports every call replicated (trunkline_cluster_replicated_calls = CALLS) it is killed
# with SIGKILL. Its lease expires, each survivor finds its address silent, logs
# "cluster: node is gone ...; adopting its calls" and re-INVITEs both legs of each call it is
# first for on the ring; each call logs "call adopted: both legs moved here" once both legs
# answered 200 and were ACKed. From the survivors' logs (JSON, RFC 3339 stamps) the script
# prints, per call, "node is gone" -> "call adopted" p50/p99/max, and the kill -> "node is
# gone" time; it checks that every call was adopted (metrics, logs) and that SIPp's caller and
# callee both completed every call (re-INVITE answered, BYE through the adopter).
#
#   load/takeover.sh [--quick]            (--quick: 100 calls)
#   CALLS=1000 RATE=200 LEASE_TTL=4 load/takeover.sh
#
# Loopback only, bounded in time and calls; every process it starts is stopped by PID on exit.
# See load/README.md ("Takeover time").
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
LIB="$HERE/benchlib.py"
SCEN="$HERE/scenarios"

usage() {
	sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'
	cat <<'EOF'
Options:
  --quick            100 calls instead of 1000
  -h, --help         this text
Environment (defaults):
  TRUNKLINE_BIN      use this binary instead of `cargo build --release --bin trunkline`
  CALLS              calls placed through 127.0.0.11 and adopted (1000; --quick 100)
  RATE               calls/s they are placed at (200)
  LEASE_TTL          lease_ttl_secs of the three nodes (4)
  MEDIA              1: media anchored on each node's address (the node's default, no RTP is
                     sent); 0: [media] enabled = false (1)
  HOLD_AFTER_MS      how long each call lasts after its adoption before the caller's BYE (5000)
  ADOPT_WAIT_SECS    how long after the kill every call must be adopted (LEASE_TTL + 60)
  NODE_SIP_PORT NODE_METRICS_PORT NODE_ADMIN_PORT NODE_CLUSTER_PORT
                     ports of every node, on its own address (5060 9464 50051 7000)
  UAC_IP UAC_PORT UAS_IP UAS_PORT   SIPp ends (127.0.0.2:5080, 127.0.0.3:5090)
  ETCD_BIN ETCD_CLIENT_PORT ETCD_PEER_PORT   etcd (etcd, 12479, 12480)
  ETCD_KEEP_DATA     1: keep etcd's data dir under the run's directory (removed at exit)
EOF
}

# shellcheck source=load/lib.sh
. "$HERE/lib.sh"
QUICK=0
while [ $# -gt 0 ]; do
	case "$1" in
	--quick) QUICK=1 ;;
	-h | --help) usage; exit 0 ;;
	*) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
	esac
	shift
done
if [ "$QUICK" = 1 ]; then : "${CALLS:=100}"; else : "${CALLS:=1000}"; fi
: "${RATE:=200}" "${LEASE_TTL:=4}" "${MEDIA:=1}" "${HOLD_AFTER_MS:=5000}"
: "${ADOPT_WAIT_SECS:=$((LEASE_TTL + 60))}"
: "${NODE_SIP_PORT:=5060}" "${NODE_METRICS_PORT:=9464}" "${NODE_ADMIN_PORT:=50051}" "${NODE_CLUSTER_PORT:=7000}"
: "${UAC_IP:=127.0.0.2}" "${UAC_PORT:=5080}" "${UAS_IP:=127.0.0.3}" "${UAS_PORT:=5090}"
: "${ETCD_BIN:=etcd}" "${ETCD_CLIENT_PORT:=12479}" "${ETCD_PEER_PORT:=12480}" "${ETCD_KEEP_DATA:=0}"
: "${TL_READY_SECS:=20}"
# The scenarios check that the re-INVITE comes from elsewhere than 127.0.0.11: it is the one
# that dies.
NODE_IPS=(127.0.0.11 127.0.0.12 127.0.0.13)
NODE_IDS=(tk1 tk2 tk3)
# shellcheck disable=SC2054 # "all,-abortunexp" is one SIPp argument
SIPP_COMMON=(-nostdin -default_behaviors all,-abortunexp -buff_size 4194304 -trace_stat -fd 1
	-trace_err -max_log_size 10000000 -trace_screen -l $((CALLS + 10)))

out_dir takeover.log
ON_EXIT+=('[ "$ETCD_KEEP_DATA" = 1 ] || rm -rf "$OUT/etcd-data"')

for t in sipp curl python3 "$ETCD_BIN"; do command -v "$t" >/dev/null || die "$t not found"; done
[ -f "$SCEN/uac_adopted.xml" ] && [ -f "$SCEN/uas_adopted.xml" ] || die "scenarios missing in $SCEN"
if [ -n "${TRUNKLINE_BIN:-}" ]; then
	[ -x "$TRUNKLINE_BIN" ] || die "TRUNKLINE_BIN=$TRUNKLINE_BIN is not an executable file"
	TL_BIN=$TRUNKLINE_BIN
else
	log "building trunkline: cargo build --release --bin trunkline (log: $OUT/cargo-build.log)"
	(cd "$ROOT" && cargo build --release --bin trunkline) >"$OUT/cargo-build.log" 2>&1 ||
		die "cargo build --release --bin trunkline failed (log: $OUT/cargo-build.log); or set TRUNKLINE_BIN"
	TL_BIN="$ROOT/target/release/trunkline"
fi
{
	echo "started=$(date -Is)"
	echo "calls=$CALLS"
	echo "rate=$RATE"
	echo "lease_ttl_secs=$LEASE_TTL"
	echo "media=$MEDIA"
	echo "hold_after_ms=$HOLD_AFTER_MS"
	echo "adopt_wait_secs=$ADOPT_WAIT_SECS"
	echo "nodes=${NODE_IPS[*]} (sip $NODE_SIP_PORT, metrics $NODE_METRICS_PORT, admin $NODE_ADMIN_PORT, cluster $NODE_CLUSTER_PORT)"
	echo "uac=$UAC_IP:$UAC_PORT uas=$UAS_IP:$UAS_PORT etcd=127.0.0.1:$ETCD_CLIENT_PORT"
	echo "trunkline_bin=$TL_BIN ($(sha256sum "$TL_BIN" | cut -c1-16), built $(date -r "$TL_BIN" -Is))"
	echo "host=$(uname -srm), $(nproc) cpus, load avg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "sipp=$(sipp -v 2>&1 | grep -o 'SIPp v[^ ]*' | head -1)"
	echo "etcd=$("$ETCD_BIN" --version 2>/dev/null | head -1)"
} >"$OUT/params.env"
log "output: $OUT"
sysctl -w net.core.rmem_max=8388608 net.core.wmem_max=8388608 >/dev/null 2>&1 ||
	log "note: could not raise net.core.rmem_max/wmem_max (SIPp buffers may be capped)"
ulimit -n 65536 2>/dev/null || true

metric() { # IP NAME: an unlabelled sample of a node's metrics (empty if none)
	curl -s -m 2 "http://$1:$NODE_METRICS_PORT/metrics" 2>/dev/null | awk -v n="$2" '$1 == n && !seen {print $2; seen = 1}' || true
}
num() { local v=${1:-0}; echo "${v%.*}"; } # "12" from "12" or "12.0"; 0 from ""

# ------------------------------------------------------------ etcd
ETCD_URL="http://127.0.0.1:$ETCD_CLIENT_PORT"
PEER_URL="http://127.0.0.1:$ETCD_PEER_PORT"
"$ETCD_BIN" --name takeover --data-dir "$OUT/etcd-data" \
	--listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
	--listen-peer-urls "$PEER_URL" --initial-advertise-peer-urls "$PEER_URL" \
	--initial-cluster "takeover=$PEER_URL" --initial-cluster-state new >"$OUT/etcd.log" 2>&1 &
ETCD_PID=$!
STARTED+=("$ETCD_PID")
for i in $(seq 1 200); do
	curl -s -m 1 "$ETCD_URL/health" 2>/dev/null | grep -q '"health":"true"' && break
	kill -0 "$ETCD_PID" 2>/dev/null || die "etcd exited at start-up; see $OUT/etcd.log: $(tail -3 "$OUT/etcd.log")"
	sleep 0.1
done
curl -s -m 1 "$ETCD_URL/health" | grep -q '"health":"true"' || die "etcd did not become healthy; see $OUT/etcd.log"

# ------------------------------------------------------------ the trunk (SIPp uas)
mkdir -p "$OUT/uas" "$OUT/uac"
(cd "$OUT/uas" && exec sipp -sf "$SCEN/uas_adopted.xml" "${SIPP_COMMON[@]}" -i "$UAS_IP" -p "$UAS_PORT" \
	-m "$CALLS" -recv_timeout $(((CALLS / RATE + ADOPT_WAIT_SECS + HOLD_AFTER_MS / 1000 + 60) * 1000)) \
	-timeout $((CALLS / RATE + ADOPT_WAIT_SECS + HOLD_AFTER_MS / 1000 + 120))s) \
	>"$OUT/uas/uas.stdout" 2>"$OUT/uas/uas.stderr" &
UAS_PID=$!
STARTED+=("$UAS_PID")
sleep 0.3
kill -0 "$UAS_PID" 2>/dev/null || die "SIPp uas did not start ($UAS_IP:$UAS_PORT busy?): $(tail -3 "$OUT/uas/uas.stderr")"

# ------------------------------------------------------------ three nodes
NODE_PIDS=()
for k in 0 1 2; do
	ip=${NODE_IPS[$k]} id=${NODE_IDS[$k]}
	if [ "$MEDIA" = 1 ]; then
		media="# Media anchored (the default) on the node's own address; no RTP is sent.
[media]
bind = \"$ip\""
	else
		media="[media]
enabled = false"
	fi
	cat >"$OUT/$id.toml" <<EOF
# generated by load/takeover.sh
[node]
id = "$id"

[sip]
udp = ["$ip:$NODE_SIP_PORT"]
tcp = []

[metrics]
listen = "$ip:$NODE_METRICS_PORT"

[admin]
listen = "$ip:$NODE_ADMIN_PORT"

# JSON lines: RFC 3339 timestamps (microseconds) the takeover times are computed from.
[log]
level = "warn,trunkline_call=info,trunkline_cluster=info"
format = "json"

$media

[cluster]
etcd_endpoints = ["$ETCD_URL"]
lease_ttl_secs = $LEASE_TTL
# On the node's own address: once the node is dead this address refuses connections.
listen = "$ip:$NODE_CLUSTER_PORT"
replication_factor = 1

[[trunks]]
name = "uas"
address = "$UAS_IP:$UAS_PORT"
transport = "udp"

[routing]
default_trunk = "uas"
EOF
	"$TL_BIN" --config "$OUT/$id.toml" >"$OUT/$id.log" 2>&1 &
	NODE_PIDS+=($!)
	STARTED+=($!)
done
for k in 0 1 2; do
	ip=${NODE_IPS[$k]} id=${NODE_IDS[$k]}
	for i in $(seq 1 $((TL_READY_SECS * 10))); do
		[ "$(num "$(metric "$ip" trunkline_cluster_members)")" = 3 ] && break
		kill -0 "${NODE_PIDS[$k]}" 2>/dev/null || die "$id exited at start-up; see $OUT/$id.log: $(tail -5 "$OUT/$id.log")"
		sleep 0.1
	done
	[ "$(num "$(metric "$ip" trunkline_cluster_members)")" = 3 ] ||
		die "$id ($ip) does not see three members within ${TL_READY_SECS}s; see $OUT/$id.log"
done
log "three nodes up: ${NODE_IDS[*]} on ${NODE_IPS[*]}; lease ${LEASE_TTL}s; media $([ "$MEDIA" = 1 ] && echo anchored || echo off)"

# ------------------------------------------------------------ the calls, through .11
UAC_TIMEOUT=$((CALLS / RATE + ADOPT_WAIT_SECS + HOLD_AFTER_MS / 1000 + 90))
(cd "$OUT/uac" && exec sipp "${NODE_IPS[0]}:$NODE_SIP_PORT" -sf "$SCEN/uac_adopted.xml" "${SIPP_COMMON[@]}" \
	-i "$UAC_IP" -p "$UAC_PORT" -s 15550123 -r "$RATE" -m "$CALLS" -d "$HOLD_AFTER_MS" \
	-recv_timeout $(((CALLS / RATE + ADOPT_WAIT_SECS + 60) * 1000)) -timeout "${UAC_TIMEOUT}s") \
	>"$OUT/uac/uac.stdout" 2>"$OUT/uac/uac.stderr" &
UAC_PID=$!
STARTED+=("$UAC_PID")
log "placing $CALLS calls through ${NODE_IDS[0]} (${NODE_IPS[0]}) at $RATE calls/s"
deadline=$((SECONDS + CALLS / RATE + 30))
rep=0 held1=0 held2=0
while [ $SECONDS -lt $deadline ]; do
	sleep 0.2
	rep=$(num "$(metric "${NODE_IPS[0]}" trunkline_cluster_replicated_calls)")
	held1=$(num "$(metric "${NODE_IPS[1]}" trunkline_cluster_replicas_held)")
	held2=$(num "$(metric "${NODE_IPS[2]}" trunkline_cluster_replicas_held)")
	[ "$rep" -ge "$CALLS" ] && [ $((held1 + held2)) -ge "$CALLS" ] && break
	kill -0 "$UAC_PID" 2>/dev/null || die "the SIPp uac ended before every call was up ($rep replicated); see $OUT/uac"
done
[ "$rep" -ge "$CALLS" ] && [ $((held1 + held2)) -ge "$CALLS" ] ||
	die "only $rep of $CALLS calls replicated by ${NODE_IDS[0]} (held: ${NODE_IDS[1]} $held1, ${NODE_IDS[2]} $held2) within $((CALLS / RATE + 30))s"
for k in 0 1 2; do curl -s -m 5 "http://${NODE_IPS[$k]}:$NODE_METRICS_PORT/metrics" >"$OUT/${NODE_IDS[$k]}-metrics-before-kill.txt" || true; done
log "$CALLS calls up and replicated: ${NODE_IDS[1]} holds $held1, ${NODE_IDS[2]} holds $held2"

# ------------------------------------------------------------ the kill
KILL_TS=$(date +%s.%N)
kill -KILL "${NODE_PIDS[0]}"
wait "${NODE_PIDS[0]}" 2>/dev/null || true
echo "$KILL_TS" >"$OUT/kill.time"
log "killed ${NODE_IDS[0]} (pid ${NODE_PIDS[0]}) with SIGKILL; waiting up to ${ADOPT_WAIT_SECS}s for the survivors to adopt"
deadline=$((SECONDS + ADOPT_WAIT_SECS))
done_n=0
while [ $SECONDS -lt $deadline ]; do
	sleep 0.2
	done_n=0
	for k in 1 2; do
		a=$(num "$(metric "${NODE_IPS[$k]}" trunkline_cluster_calls_adopted_total)")
		l=$(num "$(metric "${NODE_IPS[$k]}" trunkline_cluster_calls_lost_total)")
		done_n=$((done_n + a + l))
	done
	[ "$done_n" -ge "$CALLS" ] && break
done
log "adopted or lost on the survivors: $done_n of $CALLS ($(python3 -c "import time; print('%.1f' % (time.time() - $KILL_TS))")s after the kill)"
for k in 1 2; do curl -s -m 5 "http://${NODE_IPS[$k]}:$NODE_METRICS_PORT/metrics" >"$OUT/${NODE_IDS[$k]}-metrics-after.txt" || true; done

# ------------------------------------------------------------ the calls end (BYE via the adopters)
log "waiting for SIPp: calls end ${HOLD_AFTER_MS} ms after their adoption (uac timeout ${UAC_TIMEOUT}s)"
uac_rc=0
wait "$UAC_PID" || uac_rc=$?
UAC_PID=""
for i in $(seq 1 150); do kill -0 "$UAS_PID" 2>/dev/null || break; sleep 0.1; done
uas_rc=0
if kill -0 "$UAS_PID" 2>/dev/null; then
	stop_pid "$UAS_PID"
	uas_rc=timeout
else
	wait "$UAS_PID" || uas_rc=$?
fi
echo "uac_rc=$uac_rc" >>"$OUT/params.env"
echo "uas_rc=$uas_rc" >>"$OUT/params.env"
for k in 1 2; do curl -s -m 5 "http://${NODE_IPS[$k]}:$NODE_METRICS_PORT/metrics" >"$OUT/${NODE_IDS[$k]}-metrics-end.txt" || true; done

log "done; results: $OUT/results.md"
echo
python3 "$LIB" takeover "$OUT" "${NODE_IDS[@]}"
