#!/usr/bin/env bash
# Two headless baresip instances (a: 127.0.0.1:25060, b: 127.0.0.1:25062, auto-answer) call
# each other; a dials b, the call is held HOLD_SECS (10), a hangs up. Driven over ctrl_tcp.
#
#   tests/media/baresip-call.sh                 direct: a -> b, no SIP node
#   tests/media/baresip-call.sh --kamailio      starts $RELAY (lib.sh) + Kamailio (WITH_RTPENGINE,
#                                               RELAY_BY_RURI) on KAM_PORT (15060); a uses it as
#                                               outbound proxy; the relay is checked over ng
#   tests/media/baresip-call.sh --proxy H:P     a's outbound proxy is an already running SIP node
#                                               (e.g. trunkline), DIAL_URI chooses the target
#
# Pass (exit 0): b answered ("Call established"), both ends' end-of-call RTP stats show
# >= 25 packets received per second of hold (50 are sent), and with --kamailio the relay's ng query shows >= 100 RTP packets per side.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
MODE=direct
PROXY=""
while [ $# -gt 0 ]; do
	case "$1" in
	--kamailio) MODE=kamailio ;;
	--proxy) MODE=proxy; PROXY=$2; shift ;;
	-h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument $1" ;;
	esac
	shift
done
: "${HOLD_SECS:=10}" "${A_PORT:=25060}" "${B_PORT:=25062}" "${A_CTRL:=25070}" "${B_CTRL:=25072}"
: "${KAM_PORT:=15060}" "${DIAL_URI:=sip:b@127.0.0.1:$B_PORT}"
command -v baresip >/dev/null || die "baresip not installed (apt-get install baresip-core)"
OUT="$ROOT/tests/out/media/baresip-$(date +%Y%m%d-%H%M%S)-$MODE"
mkdir -p "$OUT"
log "output: $OUT (mode $MODE)"
CTRL="python3 $MEDIA_DIR/baresip/ctrl.py"

if [ "$MODE" = kamailio ]; then
	relay_start "$OUT/relay"
	kamailio -f "$MEDIA_DIR/kamailio.cfg" -DD -E -m 64 -M 8 -Y "$OUT" -A WITH_RTPENGINE -A RELAY_BY_RURI \
		-A "RTPENGINE_SOCK=\"udp:$NG\"" -A "CTL_SOCK=\"unix:$OUT/kamailio_ctl\"" \
		-A "KAM_LISTEN=udp:127.0.0.1:$KAM_PORT" -A "KAM_ALIAS=\"127.0.0.1:$KAM_PORT\"" \
		>"$OUT/kamailio.log" 2>&1 &
	STARTED+=($!)
	sleep 1
	kill -0 "${STARTED[-1]}" 2>/dev/null || die "kamailio exited: $(tail -5 "$OUT/kamailio.log")"
	PROXY=127.0.0.1:$KAM_PORT
fi

start_ua() { # NAME SIP_PORT CTRL_PORT ACCOUNT
	local d="$OUT/$1"
	mkdir -p "$d"
	sed -e "s/@SIP_PORT@/$2/" -e "s/@CTRL_PORT@/$3/" "$MEDIA_DIR/baresip/config.template" >"$d/config"
	echo "$4" >"$d/accounts"
	: >"$d/contacts"
	baresip -f "$d" >"$d/baresip.log" 2>&1 </dev/null &
	STARTED+=($!)
}
a_acc="<sip:a@127.0.0.1:$A_PORT>;regint=0"
[ -n "$PROXY" ] && a_acc="$a_acc;outbound=\"sip:$PROXY\""
start_ua b "$B_PORT" "$B_CTRL" "<sip:b@127.0.0.1:$B_PORT>;regint=0;answermode=auto"
start_ua a "$A_PORT" "$A_CTRL" "$a_acc"
for i in $(seq 1 50); do
	python3 -c 'import socket,sys; [socket.create_connection(("127.0.0.1", int(p)), timeout=0.2).close() for p in sys.argv[1:]]' \
		"$A_CTRL" "$B_CTRL" 2>/dev/null && break
	sleep 0.2
done

log "a dials $DIAL_URI$([ -n "$PROXY" ] && echo " via $PROXY" || true)"
$CTRL "$A_CTRL" dial "$DIAL_URI" >"$OUT/dial.txt" 2>&1 || true
RC=0
for i in $(seq 1 50); do grep -q "Call established" "$OUT/b/baresip.log" && break; sleep 0.2; done
grep -q "Call established" "$OUT/b/baresip.log" || { log "FAIL: b never established the call"; RC=1; }
sleep "$HOLD_SECS"
for ua in a b; do
	port=$A_CTRL; [ $ua = b ] && port=$B_CTRL
	$CTRL "$port" callstat >"$OUT/$ua/callstat.txt" 2>&1 || true
done
if [ "$MODE" = kamailio ]; then
	CALLID=$(python3 "$MEDIA_DIR/ngctl.py" --ng "$NG" list | python3 -c 'import json,sys; c=json.load(sys.stdin).get("calls",[]); print(c[0] if c else "")')
	if [ -n "$CALLID" ] && python3 "$MEDIA_DIR/ngctl.py" --ng "$NG" check "$CALLID" --min-packets 100 >"$OUT/query.json" 2>"$OUT/check.log"; then
		log "relay query: $(tail -1 "$OUT/check.log")"
	else
		log "FAIL: relay query for '$CALLID': $(cat "$OUT/check.log" 2>/dev/null | tr '\n' ' ')"; RC=1
	fi
fi
$CTRL "$A_CTRL" hangup >/dev/null 2>&1 || true
for i in $(seq 1 25); do grep -q "terminated\|Call closed\|closed" "$OUT/b/baresip.log" && break; sleep 0.2; done
grep -qi "terminated\|closed" "$OUT/b/baresip.log" || { log "FAIL: b saw no hang-up"; RC=1; }
# at call end each baresip logs (rtp_stats yes) "packets: <transmitted> <received>";
# require >= 50 packets received per ~second of hold on both ends... loosely: >= 25 * HOLD_SECS
sleep 0.5
for ua in a b; do
	rx=$(awk '/^packets:/ {print $3; exit}' "$OUT/$ua/baresip.log")
	tx=$(awk '/^packets:/ {print $2; exit}' "$OUT/$ua/baresip.log")
	log "$ua: RTP packets sent ${tx:-?}, received ${rx:-?} (baresip end-of-call stats)"
	[ "${rx:-0}" -ge $((25 * HOLD_SECS)) ] || { log "FAIL: $ua received too little RTP"; RC=1; }
done
$CTRL "$A_CTRL" quit >/dev/null 2>&1 || true
$CTRL "$B_CTRL" quit >/dev/null 2>&1 || true
[ "$RC" = 0 ] && log PASS || log "FAIL (logs: $OUT)"
exit "$RC"
