#!/usr/bin/env bash
# The one test command: unit tests, lints, end-to-end tests against real SIP peers, and a
# bounded parser fuzz run. Usage: bash tests/run.sh   (TRUNKLINE_TESTS=unit|e2e|all, default all)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
WHAT=${TRUNKLINE_TESTS:-all}
case "$WHAT" in unit|e2e|all) ;; *) echo "TRUNKLINE_TESTS must be unit, e2e or all (got '$WHAT')" >&2; exit 2 ;; esac

# Debian packages the tests need: "command package" per line (a path instead of a command
# for packages that install no command).
# Installed with --no-install-recommends; what each really needs on a clean Debian 12:
#   sip-tester: SIPp with PCAP play and RTP echo compiled in (the media tests use both);
#   kamailio: its rtpengine module is in the main package (media test 5);
#   baresip-core: /usr/bin/baresip and the g711/ausine/alsa/account/menu/ctrl_tcp modules
#     (the "baresip" package only adds GUI/video recommends); ALSA's "null" device comes from
#     libasound2-data, a dependency, so no alsa-utils;
#   python3: tests/media/make_pcap.py writes the RTP pcaps (kamailio depends on it anyway);
#   sipvicious: svmap scans the node from a stranger's address (tests/e2e/tests/edge.rs);
#   rtpengine-daemon: rtpengine alone, in user space (the "rtpengine" metapackage would build
#     its kernel module with DKMS), for tests/e2e/tests/rtp_bleed.rs, which holds it and
#     trunkline-relay to one assertion;
#   openssl: makes the CA, node and client certificates of the admin API's TLS test;
#   etcd-server: the etcd the cluster tests start (tests/e2e/tests/cluster_membership.rs);
#   kamailio-tls-modules: Kamailio's tls module, the TLS carrier of tests/e2e/tests/tls_trunk.rs;
#   dnsmasq-base: the DNS server (NAPTR, SRV, A) of tests/e2e/tests/trunk_dns.rs;
#   linphone-cli: linphonec, the one Debian client that answers a SHA-256 digest challenge
#     (tests/e2e/tests/trunk_auth.rs).
DEB_PACKAGES=(
  "sipp sip-tester"
  "kamailio kamailio"
  "/usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so kamailio-tls-modules"
  "/usr/sbin/dnsmasq dnsmasq-base"
  "baresip baresip-core"
  "linphonec linphone-cli"
  "python3 python3"
  "svmap sipvicious"
  "rtpengine rtpengine-daemon"
  "openssl openssl"
  "etcd etcd-server"
)

declare -a RESULTS=()
FAILED=0
PASSED=0

step() { # step NAME CMD...
  local name=$1; shift
  echo
  echo "=== $name: $*"
  local start=$SECONDS
  if "$@"; then
    RESULTS+=("PASS  $name ($((SECONDS - start)) s)")
    PASSED=$((PASSED + 1))
  else
    RESULTS+=("FAIL  $name ($((SECONDS - start)) s)")
    FAILED=$((FAILED + 1))
  fi
}


install_packages() {
  local missing=() entry cmd pkg
  for entry in "${DEB_PACKAGES[@]}"; do
    read -r cmd pkg <<<"$entry"
    if [[ $cmd == /* ]]; then
      [ -e "$cmd" ] || missing+=("$pkg")
    else
      command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && { echo "all test packages present"; return 0; }
  echo "installing: ${missing[*]}"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  # Never let a package start a service on this machine.
  local policy=/usr/sbin/policy-rc.d created=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
    created=1
  fi
  local rc=0
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"; } || rc=$?
  [ $created -eq 1 ] && $sudo rm -f "$policy"
  return $rc
}

# The generic gRPC client of the admin API tests (tests/grpc/admin_client.py): grpcio with its
# reflection and health packages from PyPI, in a virtualenv of the workspace (target/, so
# `cargo clean` removes it). Debian's python3-venv is installed if the interpreter lacks venv.
GRPC_VENV="$ROOT/target/grpc-venv"
GRPC_PACKAGES=(grpcio==1.85.3 grpcio-reflection==1.85.1 grpcio-health-checking==1.85.1)
grpc_client_venv() {
  if "$GRPC_VENV/bin/python3" -c 'import grpc, grpc_reflection, grpc_health' 2>/dev/null; then
    echo "gRPC client virtualenv present"
    return 0
  fi
  rm -rf "$GRPC_VENV"
  if ! python3 -m venv "$GRPC_VENV"; then
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends python3-venv
    rm -rf "$GRPC_VENV"
    python3 -m venv "$GRPC_VENV"
  fi
  "$GRPC_VENV/bin/pip" install -q --disable-pip-version-check "${GRPC_PACKAGES[@]}"
}

tune_system() {
  # SIPp runs with -buff_size 4194304; allow that much socket buffer if we may (ignore failure).
  sysctl -w net.core.rmem_max=8388608 >/dev/null 2>&1 || true
  sysctl -w net.core.wmem_max=8388608 >/dev/null 2>&1 || true
  # 1000 idle TCP connections on each side of the node.
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  return 0
}

# fuzz_target CRATE_DIR TARGET SECONDS [SEED_DIR]: bounded run on the target's own corpus
# (fuzz/corpus/TARGET comes first: it is where libFuzzer writes); SEED_DIR is only read.
fuzz_target() {
  command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
  local corpus="fuzz/corpus/$2"
  (cd "$1" && mkdir -p "$corpus" && RUSTC_BOOTSTRAP=1 cargo fuzz run "$2" "$corpus" ${4:+"$4"} -- -max_total_time="$3")
}

if [ "$WHAT" = unit ] || [ "$WHAT" = all ]; then
  step "unit tests" cargo test --workspace --exclude trunkline-e2e
  step "rustfmt" cargo fmt --all -- --check
  step "clippy" cargo clippy --workspace --all-targets -- -D warnings
  step "layer check (pure crates stay pure)" tests/check-layers.sh
  step "fuzz parse_message (45 s)" fuzz_target services/sip parse_message 45 "$ROOT/tests/conformance/rfc4475"
  step "fuzz parse_sdp (20 s)" fuzz_target services/sdp parse_sdp 20
  for target in rtp_header rtcp_packet ng_message; do
    step "fuzz $target (20 s)" fuzz_target services/media "$target" 20
  done
fi

if [ "$WHAT" = e2e ] || [ "$WHAT" = all ]; then
  step "test packages" install_packages
  step "gRPC client virtualenv" grpc_client_venv
  export TRUNKLINE_GRPC_PYTHON="$GRPC_VENV/bin/python3"
  tune_system
  step "build node, relay and trunkctl (release)" cargo build --release --bin trunkline --bin trunkline-relay --bin trunkctl
  # Single-threaded: SIPp load is timing sensitive on 2 cores.
  step "end-to-end tests" cargo test -p trunkline-e2e --release --no-fail-fast -- --test-threads=1
fi

echo
echo "=== summary (TRUNKLINE_TESTS=$WHAT, ${SECONDS} s; logs of e2e runs in tests/out/)"
printf '  %s\n' "${RESULTS[@]}"
echo "steps: $PASSED passed, $FAILED failed"
if [ "$FAILED" -gt 0 ]; then
  echo "$FAILED step(s) failed"
  exit 1
fi
echo "all steps passed"
