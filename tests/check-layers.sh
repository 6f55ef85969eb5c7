#!/usr/bin/env bash
# The pure crates (ARCHITECTURE.md, "Layers and crates") must not depend on any
# runtime, actor, RPC, metrics or etcd crate. This proves it from `cargo tree`.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0
for crate in trunkline-sip trunkline-b2bua; do
  deps=$(cargo tree -p "$crate" -e normal --prefix none --format '{p}' 2>/dev/null | awk '{print $1}' | sort -u)
  bad=$(echo "$deps" | grep -E '^(tokio|ractor|tonic|prost|prometheus|prometheus-client|etcd-client|hyper|mio)$' || true)
  if [ -n "$bad" ]; then
    echo "layer check: $crate must stay pure but depends on: $bad" >&2
    status=1
  else
    echo "layer check: $crate is pure ($(echo "$deps" | wc -l) crates, none of tokio/ractor/tonic/prometheus/etcd)"
  fi
done
exit $status
