#!/usr/bin/env python3
"""Tiny ng-protocol client (rtpengine's control protocol; trunkline-relay speaks it too).
Standard library only.

    ngctl.py [--ng HOST:PORT] ping
    ngctl.py [--ng HOST:PORT] list
    ngctl.py [--ng HOST:PORT] query CALL-ID [FROM-TAG]        -> JSON summary on stdout
    ngctl.py [--ng HOST:PORT] check CALL-ID [--min-packets N] [--expect-endpoint TAGPREFIX=IP:PORT]
        exit 0 when every tag of the call has an RTP stream that received >= N packets (default
        50) and, for --expect-endpoint, the tag starting with TAGPREFIX latched onto IP:PORT.
"""
import json
import os
import socket
import sys


def benc(v) -> bytes:
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, list):
        return b"l" + b"".join(benc(x) for x in v) + b"e"
    if isinstance(v, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, x) for k, x in v.items())
        return b"d" + b"".join(benc(k) + benc(x) for k, x in items) + b"e"
    raise TypeError(type(v))


def bdec(b: bytes, i: int = 0):
    c = b[i:i + 1]
    if c == b"i":
        j = b.index(b"e", i)
        return int(b[i + 1:j]), j + 1
    if c in (b"l", b"d"):
        i += 1
        out = [] if c == b"l" else {}
        while b[i:i + 1] != b"e":
            if c == b"l":
                v, i = bdec(b, i)
                out.append(v)
            else:
                k, i = bdec(b, i)
                v, i = bdec(b, i)
                out[k] = v
        return out, i + 1
    j = b.index(b":", i)
    n = int(b[i:j])
    s = b[j + 1:j + 1 + n]
    try:
        s = s.decode()
    except UnicodeDecodeError:
        pass
    return s, j + 1 + n


def request(ng, cmd: dict, timeout=1.0, tries=3) -> dict:
    host, port = ng.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    cookie = f"ngctl{os.getpid()}_{id(cmd)}".encode()
    for _ in range(tries):
        s.sendto(cookie + b" " + benc(cmd), (host, int(port)))
        try:
            while True:
                data, _ = s.recvfrom(65536)
                if data.startswith(cookie + b" "):
                    return bdec(data[len(cookie) + 1:])[0]
        except socket.timeout:
            continue
    raise SystemExit(f"ngctl: no reply from {ng}")


def summarize(reply: dict) -> dict:
    """Per tag: the RTP stream (first of each media) with its endpoints and packet counters."""
    out = {"result": reply.get("result"), "tags": {}}
    for tag, t in (reply.get("tags") or {}).items():
        medias = []
        for m in t.get("medias", []):
            streams = m.get("streams", [])
            if not streams:
                continue
            st = streams[0]
            ep = st.get("endpoint") or {}
            adv = st.get("advertised endpoint") or {}
            medias.append({
                "local_port": st.get("local port"),
                "endpoint": f"{ep.get('address')}:{ep.get('port')}",
                "advertised": f"{adv.get('address')}:{adv.get('port')}",
                "packets_in": (st.get("stats") or {}).get("packets"),
                "bytes_in": (st.get("stats") or {}).get("bytes"),
            })
        out["tags"][tag] = medias
    if "totals" in reply:
        out["totals"] = reply["totals"]
    return out


def main(argv):
    ng = "127.0.0.1:2223"
    if len(argv) > 1 and argv[0] == "--ng":
        ng, argv = argv[1], argv[2:]
    if not argv:
        raise SystemExit(__doc__)
    cmd, rest = argv[0], argv[1:]
    if cmd == "ping":
        r = request(ng, {"command": "ping"}, timeout=0.3, tries=1)
        print(r.get("result"))
        return 0 if r.get("result") == "pong" else 1
    if cmd == "list":
        print(json.dumps(request(ng, {"command": "list"}), indent=1))
        return 0
    if cmd in ("query", "check"):
        q = {"command": "query", "call-id": rest[0]}
        if cmd == "query" and len(rest) > 1:
            q["from-tag"] = rest[1]
        r = request(ng, q)
        summary = summarize(r)
        print(json.dumps(summary, indent=1))
        if cmd == "query":
            return 0 if r.get("result") == "ok" else 1
        min_pk, expect = 50, []
        i = 1
        while i < len(rest):
            if rest[i] == "--min-packets":
                min_pk = int(rest[i + 1]); i += 2
            elif rest[i] == "--expect-endpoint":
                expect.append(rest[i + 1].split("=", 1)); i += 2
            else:
                raise SystemExit(f"unknown argument {rest[i]}")
        ok = r.get("result") == "ok" and len(summary["tags"]) >= 2
        for tag, medias in summary["tags"].items():
            got = max((m["packets_in"] or 0 for m in medias), default=0)
            if got < min_pk:
                print(f"CHECK FAILED: tag {tag}: {got} RTP packets received (< {min_pk})", file=sys.stderr)
                ok = False
        for prefix, ep in expect:
            hits = [m for t, ms in summary["tags"].items() if t.startswith(prefix) for m in ms]
            if not any(m["endpoint"] == ep for m in hits):
                print(f"CHECK FAILED: tag {prefix}*: endpoint {[m['endpoint'] for m in hits]} != {ep}", file=sys.stderr)
                ok = False
        print("CHECK " + ("OK" if ok else "FAILED"), file=sys.stderr)
        return 0 if ok else 1
    raise SystemExit(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
