#!/usr/bin/env bash
# One SIPp call with RTP through a SIP node whose media is anchored on an ng relay, checked on
# the relay: SDP rewritten to relay ports, RTP counted in both directions, latching.
#
#   tests/media/sipp-media.sh [--nat] [--node HOST:PORT]
#
#   default      starts the relay ($RELAY: rtpengine | trunkline | none) and Kamailio
#                (tests/media/kamailio.cfg -A WITH_RTPENGINE, rtpengine_sock = udp:$NG)
#                on 127.0.0.1:$KAM_PORT (15060), then SIPp uas (127.0.0.1:$UAS_PORT 15090,
#                -rtp_echo on $UAS_MP 16000) and one SIPp uac call ($UAC_PORT 15080,
#                play_pcap_audio from $UAC_MP 16100) held HOLD_MS (8000).
#   --nat        the uac's SDP advertises 192.0.2.1 (c= and o=) but it sends from 127.0.0.1:
#                only latching makes the echo come back; checked on the relay.
# Ports are private by default (env UAC_PORT UAS_PORT KAM_PORT UAC_MP UAS_MP; NG etc. in lib.sh).
#   --node H:P   do not start Kamailio: send the call to an already running SIP node (e.g. a
#                trunkline node configured to route to the uas on 127.0.0.1:5090 and to anchor
#                media on the relay at $NG). With RELAY=none the script starts no relay either.
#
# Pass/fail (exit 0/1): the call completed (SIPp uac exit 0); the INVITE and 200 the far ends
# received carry the relay's address and a port in PORT_MIN..PORT_MAX; during the hold the
# relay's ng "query" for the call shows >= 100 RTP packets received on each side; with --nat the
# caller side latched onto 127.0.0.1:$UAC_MP. Output and logs in tests/out/media/sipp-<ts>/.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NAT=0
NODE=""
while [ $# -gt 0 ]; do
	case "$1" in
	--nat) NAT=1 ;;
	--node) NODE=$2; shift ;;
	-h | --help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument $1" ;;
	esac
	shift
done
: "${HOLD_MS:=8000}" "${UAC_PORT:=15080}" "${UAS_PORT:=15090}" "${KAM_PORT:=15060}"
: "${UAC_MP:=16100}" "${UAS_MP:=16000}"
SDP_IP=127.0.0.1
[ "$NAT" = 1 ] && SDP_IP=192.0.2.1

OUT="$ROOT/tests/out/media/sipp-$(date +%Y%m%d-%H%M%S)$([ "$NAT" = 1 ] && echo -nat || true)"
mkdir -p "$OUT"
log "output: $OUT (relay $RELAY on $NG, nat=$NAT)"
python3 "$MEDIA_DIR/make_pcap.py" "$OUT/pcmu.pcap" $(((HOLD_MS + 4000) / 1000))

relay_start "$OUT/relay"

if [ -z "$NODE" ]; then
	command -v kamailio >/dev/null || die "kamailio not installed"
	kamailio -f "$MEDIA_DIR/kamailio.cfg" -DD -E -m 64 -M 8 -Y "$OUT" -A WITH_RTPENGINE \
		-A "RTPENGINE_SOCK=\"udp:$NG\"" -A "CTL_SOCK=\"unix:$OUT/kamailio_ctl\"" \
		-A "UAS_DST=\"sip:127.0.0.1:$UAS_PORT\"" -A "KAM_LISTEN=udp:127.0.0.1:$KAM_PORT" \
		-A "KAM_ALIAS=\"127.0.0.1:$KAM_PORT\"" >"$OUT/kamailio.log" 2>&1 &
	STARTED+=($!)
	KAM_PID=$!
	sleep 1
	kill -0 "$KAM_PID" 2>/dev/null || die "kamailio exited: $(tail -5 "$OUT/kamailio.log")"
	NODE=127.0.0.1:$KAM_PORT
fi

(cd "$OUT" && exec sipp -sf "$MEDIA_DIR/uas_rtp.xml" -i 127.0.0.1 -p "$UAS_PORT" -mp "$UAS_MP" \
	-rtp_echo -nostdin -m 1 -timeout $((HOLD_MS / 1000 + 20))s -trace_msg -trace_err \
	-default_behaviors all,-abortunexp) >"$OUT/uas.stdout" 2>&1 &
UAS_PID=$!
STARTED+=("$UAS_PID")
sleep 0.3

(cd "$OUT" && exec sipp "$NODE" -sf "$MEDIA_DIR/uac_rtp.xml" -i 127.0.0.1 -p "$UAC_PORT" \
	-mp "$UAC_MP" -key sdp_ip "$SDP_IP" -m 1 -d "$HOLD_MS" -nostdin \
	-timeout $((HOLD_MS / 1000 + 15))s -trace_msg -trace_err -trace_logs \
	-default_behaviors all,-abortunexp) >"$OUT/uac.stdout" 2>&1 &
UAC_PID=$!
STARTED+=("$UAC_PID")

# mid-hold: ask the relay about the call
sleep $(((HOLD_MS * 3 / 4) / 1000))
CALLID=$(grep -ho 'CALLID [^ ]*' "$OUT"/uac_rtp_*_logs.log 2>/dev/null | head -1 | cut -d' ' -f2 || true)
RC=0
if [ -z "$CALLID" ]; then
	log "FAIL: the uac logged no Call-ID (call not answered?)"
	RC=1
else
	expect=()
	[ "$NAT" = 1 ] && expect=(--expect-endpoint "$(grep -ho 'FROMTAG [^ ]*' "$OUT"/uac_rtp_*_logs.log | head -1 | cut -d' ' -f2)=127.0.0.1:$UAC_MP")
	if python3 "$MEDIA_DIR/ngctl.py" --ng "$NG" check "$CALLID" --min-packets 100 "${expect[@]}" \
		>"$OUT/query.json" 2>"$OUT/check.log"; then
		log "relay query: $(tail -1 "$OUT/check.log")"
	else
		log "FAIL: relay query: $(cat "$OUT/check.log" | tr '\n' ' ')"
		RC=1
	fi
fi

wait "$UAC_PID" && UAC_RC=0 || UAC_RC=$?
wait "$UAS_PID" 2>/dev/null || true
[ "$UAC_RC" = 0 ] || { log "FAIL: SIPp uac exit $UAC_RC (see $OUT/uac.stdout)"; RC=1; }

# SDP rewritten: the INVITE at the uas and the 200 at the uac name the relay and a relay port
python3 - "$OUT" "$PORT_MIN" "$PORT_MAX" "$UAC_MP" "$UAS_MP" <<'PY' || RC=1
import glob, re, sys
out, lo, hi, uac_mp, uas_mp = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
def first_sdp(pattern, start):
    for f in glob.glob(f"{out}/{pattern}"):
        text = open(f, errors="replace").read()
        for msg in re.split(r"^-{5,}.*$", text, flags=re.M):
            if msg.strip().startswith("UDP message received") and start in msg and "m=audio" in msg:
                c = re.search(r"^c=IN IP4 (\S+)", msg, re.M).group(1)
                m = int(re.search(r"^m=audio (\d+)", msg, re.M).group(1))
                return c, m
    return None
ok = True
for name, pattern, start in (("INVITE at uas", "uas_rtp_*_messages.log", "INVITE sip:"),
                             ("200 at uac", "uac_rtp_*_messages.log", "SIP/2.0 200")):
    got = first_sdp(pattern, start)
    good = got is not None and got[0] == "127.0.0.1" and lo <= got[1] <= hi
    print(f"[sdp] {name}: {got} -> {'anchored on relay' if good else 'NOT anchored'}", file=sys.stderr)
    ok &= good
sys.exit(0 if ok else 1)
PY
[ "$RC" = 0 ] && log "PASS" || log "FAIL (logs: $OUT)"
exit "$RC"
