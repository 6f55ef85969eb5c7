#!/usr/bin/env bash
# Profile a system of the signalling benchmark: by default trunkline-media (the node in its
# default configuration, media anchored) at PROFILE_RATE calls/s (200) for PROFILE_SECS (12 s)
# under `perf record -g`, then `perf report --no-children` into
# load/out/<timestamp>/<system>/profile/profile.txt (flat, top entries) and
# profile-callgraph.txt, with perf.data beside them; the top entries are printed too.
# The same fresh system, SIPp uas and bounded SIPp uac as load/bench.sh (it is
# `load/bench.sh --profile`), so a profile taken before a change and one taken after compare.
#
#   load/profile.sh [--systems trunkline-media,trunkline,kamailio-rtpengine,...]
#   PROFILE_RATE=500 PROFILE_SECS=20 PROFILE_CALLGRAPH=dwarf load/profile.sh
#
# Needs perf (Debian: apt-get install -y linux-perf) and root or kernel.perf_event_paranoid <= 1.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/bench.sh" --profile "$@"
