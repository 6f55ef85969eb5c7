#!/usr/bin/env python3
"""Arithmetic for load/bench.sh (standard library only).

Subcommands:
  judge STEPDIR RATE SECS      judge one rate-search step from the SIPp uac
                               files in STEPDIR; prints "PASS|FAIL <fields>"
                               and writes STEPDIR/step.json.  Also counts the
                               calls refused with a final status (SIPp's error
                               log; trunkline's metrics.txt and log when there),
                               net of a warm-up's counts kept in STEPDIR/warmup
  noports STEPDIR              'no free media ports' lines in STEPDIR's trunkline log
  tree PID...                  PIDs given plus all their live descendants
  cpu PID...                   sum of utime+stime (seconds) over those PIDs
  pss PID...                   sum of Pss and Rss (KiB) from smaps_rollup
  rttcount STEPDIR             number of INVITE->200 samples (= calls
                               established) written so far
  stat STEPDIR FIELD           last value of FIELD in the uac statistics csv
  clusterstep STEPDIR          trunkline-cluster, one rate-search step: replication bytes and
                               batches per call, etcd requests, from the scrapes of the node,
                               the buddy and etcd before and after the uac; writes cluster.json
  clusterfixed DIR BCPUI BCPU0 BCPU1 ECPUI ECPU0 ECPU1
                               trunkline-cluster, fixed-rate run: prints key=value lines
                               (replication per call, buddy and etcd CPU per 1000 calls,
                               etcd requests per call; the latter two also net of their
                               idle rate, sampled at I(dle), 0 (uac start) and 1 (uac end))
  clusterhold DIR BASE HELD EST
                               trunkline-cluster, hold: the buddy's memory per replica held
                               (BASE/HELD: "pss rss" KiB of the buddy before/while held)
  report OUTDIR SYS...         print the final table and write results.md
  bound PID PORT...            exit 0 when process PID itself listens on every TCP PORT
  takeover OUTDIR DEAD SURVIVOR...
                               load/takeover.sh: per-call takeover times from the survivors'
                               JSON logs, the kill time, metrics and SIPp's statistics; prints
                               the figures and writes OUTDIR/results.md and takeover.json
"""
import csv
import glob
import json
import os
import re
import sys

CLK_TCK = os.sysconf("SC_CLK_TCK")
FAIL_LIMIT = 0.001  # < 0.1 % failed calls
RATE_LIMIT = 0.95  # the 200s must arrive at >= 95 % of the offered rate


# ---------------------------------------------------------------- SIPp files
def _stat_csv(d):
    files = [f for f in glob.glob(os.path.join(d, "uac_*.csv")) if not f.endswith("_rtt.csv")]
    return files[0] if files else None


def last_stats(d):
    f = _stat_csv(d)
    if not f:
        return {}
    rows = [r for r in csv.reader(open(f, newline=""), delimiter=";") if r]
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1]))


def rtt_samples(d):
    """(date_ms, rtt_ms) per call from -trace_rtt (rtd "setup")."""
    out = []
    for f in glob.glob(os.path.join(d, "uac_*_rtt.csv")):
        with open(f, newline="") as fh:
            for r in csv.reader(fh, delimiter=";"):
                if len(r) < 3 or r[0].startswith("Date"):
                    continue
                try:
                    out.append((float(r[0]), float(r[1])))
                except ValueError:
                    pass
    return out


# SIPp -trace_err line for a response the scenario did not expect (a 4xx-6xx final), e.g.
# "... for Call-Id '12-345@127.0.0.1': while expecting '180' (index 2), received 'SIP/2.0 503 ..."
UNEXPECTED = re.compile(rb"Call-Id '([^']*)': while expecting '[^']*' \(index \d+\), received 'SIP/2\.0 ([3-6]\d\d)")
NODE_FINAL = re.compile(r'^trunkline_calls_total\{status="(\d+)"\} (\d+)', re.M)
NO_PORTS = b"no free media ports"
NODE_INVITE_REFUSED = re.compile(
    r'^trunkline_sip_responses_total\{direction="out",method="INVITE",status="([3-6]\d\d)"\} (\d+)', re.M)


def refused_by_status(d):
    """{status: calls} of calls that got a 3xx-6xx final, as the SIPp uac saw them (one per
    Call-ID and status, however often the final was retransmitted)."""
    seen = set()
    for f in glob.glob(os.path.join(d, "uac_*_errors.log*")):
        with open(f, "rb") as fh:
            for m in UNEXPECTED.finditer(fh.read()):
                seen.add((m.group(1), int(m.group(2))))
    out = {}
    for _, status in seen:
        out[status] = out.get(status, 0) + 1
    return out


def _metric_counts(p, pattern):
    """{status: count} of `pattern`'s matches in the metrics file `p` ({} when absent)."""
    out = {}
    if os.path.exists(p):
        for st, n in pattern.findall(open(p).read()):
            out[int(st)] = out.get(int(st), 0) + int(n)
    return out


def _warm_up(d):
    """The warm-up directory of phase `d`, a rate-search step or the fixed-rate run (see
    warm_up in bench.sh): what the system had counted when the measured load began, to be
    taken off the phase's own counts."""
    return os.path.join(d, "warmup")


def node_finals(d):
    """{status: calls} of trunkline's non-2xx finals from its metrics (None if not scraped),
    net of those of the phase's warm-up."""
    p = os.path.join(d, "metrics.txt")
    if not os.path.exists(p):
        return None
    before = _metric_counts(os.path.join(_warm_up(d), "metrics.txt"), NODE_FINAL)
    out = {}
    for st, n in _metric_counts(p, NODE_FINAL).items():
        n -= before.get(st, 0)
        if st >= 300 and n > 0:
            out[st] = n
    return out


def node_invite_refusals(d):
    """INVITEs trunkline answered with a non-2xx final (its metrics; None if not scraped),
    net of those of the phase's warm-up.

    A caller that ignores such an answer and retransmits its INVITE (SIPp does, with
    `-abortunexp` off) may still get the call up later, as a new call: the node's
    refusal of new calls while its receive queue is deep would then not show as a
    failed call at all. Every refusal counts as a lost call instead."""
    p = os.path.join(d, "metrics.txt")
    if not os.path.exists(p):
        return None
    before = _metric_counts(os.path.join(_warm_up(d), "metrics.txt"), NODE_INVITE_REFUSED)
    return sum(_metric_counts(p, NODE_INVITE_REFUSED).values()) - sum(before.values())


def no_port_lines(d):
    """Lines of trunkline's log in `d` saying the relay had no free media ports (None: no
    log)."""
    p = os.path.join(d, "trunkline.log")
    if not os.path.exists(p):
        return None
    with open(p, "rb") as fh:
        return fh.read().count(NO_PORTS)


def no_port_refusals(d):
    """no_port_lines of step `d`, net of those its warm-up had logged."""
    n = no_port_lines(d)
    p = os.path.join(_warm_up(d), "no-free-media-ports.count")
    if n is not None and os.path.exists(p):
        n -= _int(open(p).read().strip())
    return n


def media_sessions_left(d):
    """Media sessions the relay still held when the caller was done (every call had ended, so
    anything above 0 is a session nobody deleted); None when not a media row."""
    p = os.path.join(d, "rtpengine-sessions.txt")
    if os.path.exists(p):
        t = open(p).read().strip()
        return int(t) if t.isdigit() else None
    p = os.path.join(d, "metrics.txt")
    if os.path.exists(p):
        m = re.search(r"^trunkline_media_sessions_active (\d+)", open(p).read(), re.M)
        return int(m.group(1)) if m else None
    return None


def fmt_status(counts):
    return ", ".join("%d x%d" % (st, n) for st, n in sorted(counts.items())) if counts else ""


def warm_up_text(params):
    """How each step's system was warmed up before it was measured, for the report."""
    calls = _int(params.get("step_warmup_calls"))
    if calls <= 0:
        return ""
    return (" and places up to %d calls on it at up to %s calls/s (at most the step's rate, "
            "for at most 3 s) before the step is measured" % (
                calls, params.get("step_warmup_rate", "?")))


def pct(values, p):
    """Nearest-rank percentile."""
    if not values:
        return None
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(-(-p * len(v) // 100)) - 1))
    return v[k]


def _int(s, default=0):
    try:
        return int(float(s))
    except (TypeError, ValueError):
        return default


def judge(d, rate, secs):
    rate = float(rate)
    secs = float(secs)
    target = int(round(rate * secs))
    st = last_stats(d)
    created = _int(st.get("TotalCallCreated"))
    ok = _int(st.get("SuccessfulCall(C)"))
    failed = _int(st.get("FailedCall(C)"))
    samples = rtt_samples(d)
    rtts = [s[1] for s in samples]
    # calls never created or still open when SIPp stopped count as failed too, and so
    # does every INVITE the node refused (see node_invite_refusals)
    node_refused = node_invite_refusals(d)
    # (a refused INVITE that SIPp retransmits is refused again: at most every call is lost)
    lost = min(target, max(target - ok, failed, node_refused or 0))
    fail_frac = lost / target if target else 1.0
    if len(samples) >= 2:
        span = (max(s[0] for s in samples) - min(s[0] for s in samples)) / 1000.0
        achieved = (len(samples) - 1) / span if span > 0 else 0.0
    else:
        achieved = 0.0
    reasons = []
    if not st:
        reasons.append("no SIPp statistics")
    if fail_frac >= FAIL_LIMIT:
        reasons.append("failed %.3f%% (%d of %d)" % (100 * fail_frac, lost, target))
    if achieved < RATE_LIMIT * rate:
        reasons.append("200s arrived at %.0f/s < %.0f%% of %g/s" % (achieved, 100 * RATE_LIMIT, rate))
    # Refusals: what the caller was answered instead of a 200, and, for trunkline, what the
    # node says it answered and why (a capped rate must say what capped it).
    sipp_refused = refused_by_status(d)
    node = node_finals(d)
    no_ports = no_port_refusals(d)
    refused = []
    if sipp_refused:
        refused.append("caller got %s" % fmt_status(sipp_refused))
    if node:
        refused.append("node sent %s" % fmt_status(node))
    if no_ports:
        refused.append("%d x 'no free media ports' in the node's log" % no_ports)
    refused = "; ".join(refused)
    if refused and reasons:
        reasons.append("refused: " + refused)
    res = {
        "rate": rate, "secs": secs, "target": target, "created": created,
        "successful": ok, "failed": failed, "lost": lost,
        "fail_pct": round(100 * fail_frac, 4), "achieved_rate": round(achieved, 1),
        "retransmissions": _int(st.get("Retransmissions(C)")),
        "node_refused_invites": node_refused,
        "p50_ms": pct(rtts, 50), "p99_ms": pct(rtts, 99), "samples": len(rtts),
        "refused_seen_by_caller": {str(k): v for k, v in sorted(sipp_refused.items())},
        "node_non_2xx_finals": None if node is None else {str(k): v for k, v in sorted(node.items())},
        "no_free_media_ports": no_ports,
        "media_sessions_left": media_sessions_left(d),
        "refused": refused,
        "pass": not reasons, "why": "; ".join(reasons),
    }
    with open(os.path.join(d, "step.json"), "w") as fh:
        json.dump(res, fh, indent=1)
    line = "%s created=%d ok=%d failed=%.3f%% 200s=%.0f/s p50=%s p99=%s" % (
        "PASS" if res["pass"] else "FAIL", created, ok, res["fail_pct"], achieved,
        fnum(res["p50_ms"], "%.0fms"), fnum(res["p99_ms"], "%.0fms"))
    if res["why"]:
        line += " " + res["why"]
    elif refused:
        line += " (refused: %s)" % refused
    print(line)


# ---------------------------------------------------------------- /proc
def _ppid_map():
    m = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            s = open("/proc/%s/stat" % p).read()
        except OSError:
            continue
        fields = s[s.rfind(")") + 2:].split()
        m[int(p)] = int(fields[1])
    return m


def tree(pids):
    pids = [int(p) for p in pids]
    m = _ppid_map()
    out = [p for p in pids if p in m]
    i = 0
    while i < len(out):
        out.extend(c for c, pp in m.items() if pp == out[i] and c not in out)
        i += 1
    return out


def cpu_seconds(pids):
    total = 0
    for p in pids:
        try:
            s = open("/proc/%s/stat" % p).read()
        except OSError:
            continue
        f = s[s.rfind(")") + 2:].split()
        total += int(f[11]) + int(f[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


def pss_kib(pids):
    pss = rss = 0
    for p in pids:
        try:
            for line in open("/proc/%s/smaps_rollup" % p):
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss += int(line.split()[1])
        except OSError:
            continue
    return pss, rss


# ---------------------------------------------------------------- cluster rows
PROM_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def prom(path):
    """{(name, labels): value} of a Prometheus text scrape ({} when missing or empty)."""
    out = {}
    try:
        text = open(path).read()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        m = PROM_LINE.match(line)
        if m:
            try:
                out[(m.group(1), m.group(2) or "")] = float(m.group(3))
            except ValueError:
                pass
    return out


def psum(scrape, name):
    vals = [v for (n, _), v in scrape.items() if n == name]
    return sum(vals) if vals else None


def pdelta(a, b, name):
    x, y = psum(a, name), psum(b, name)
    return None if x is None or y is None else y - x


LABEL = re.compile(r'(\w+)="([^"]*)"')


def etcd_by_method(a, b):
    """Requests etcd received (gRPC messages: one per unary call, one per message on a stream,
    e.g. each lease keep-alive) between scrapes a and b, by service/method."""
    out = {}
    for (n, labels), v in b.items():
        if n != "grpc_server_msg_received_total":
            continue
        d = v - a.get((n, labels), 0.0)
        if d:
            lab = dict(LABEL.findall(labels))
            key = "%s/%s" % (lab.get("grpc_service", "?").split(".")[-1], lab.get("grpc_method", "?"))
            out[key] = out.get(key, 0) + d
    return out


MVCC = ("put", "range", "txn", "delete")


def scrapes(d, tag):
    t = None
    try:
        t = float(open(os.path.join(d, "scrape-%s.time" % tag)).read())
    except (OSError, ValueError):
        pass
    return (t, prom(os.path.join(d, "node-metrics-%s.txt" % tag)),
            prom(os.path.join(d, "buddy-metrics-%s.txt" % tag)),
            prom(os.path.join(d, "etcd-metrics-%s.txt" % tag)))


def _successful(d):
    try:
        return json.load(open(os.path.join(d, "step.json")))["successful"]
    except (OSError, ValueError, KeyError):
        return _int(last_stats(d).get("SuccessfulCall(C)"))


def clusterstep(d):
    t0, n0, _, e0 = scrapes(d, "before")
    t1, n1, b1, e1 = scrapes(d, "after")
    ok = _successful(d)
    res = {"successful": ok}
    by = pdelta(n0, n1, "trunkline_cluster_replication_bytes_total")
    ba = pdelta(n0, n1, "trunkline_cluster_replication_batches_total")
    res["replication_bytes"] = by
    res["replication_batches"] = ba
    res["replication_bytes_per_call"] = round(by / ok, 1) if by is not None and ok else None
    res["replication_batches_per_s"] = round(ba / (t1 - t0), 1) if ba is not None and t0 and t1 else None
    res["replication_dropped"] = psum(n1, "trunkline_cluster_replication_dropped")
    res["buddy_replicas_left"] = psum(b1, "trunkline_cluster_replicas_held")
    res["etcd_requests"] = pdelta(e0, e1, "grpc_server_msg_received_total")
    res["etcd_requests_by_method"] = etcd_by_method(e0, e1)
    res["window_s"] = round(t1 - t0, 2) if t0 and t1 else None
    with open(os.path.join(d, "cluster.json"), "w") as fh:
        json.dump(res, fh, indent=1)
    print("repl=%s B/call %s batches/s dropped=%s etcd_requests=%s in %ss" % (
        fnum(res["replication_bytes_per_call"]), fnum(res["replication_batches_per_s"]),
        fnum(res["replication_dropped"]), fnum(res["etcd_requests"]), fnum(res["window_s"], "%.1f")))


def fmt_methods(m):
    return ", ".join("%s %d" % (k, v) for k, v in sorted(m.items())) or "none"


def clusterfixed(d, bcpui, bcpu0, bcpu1, ecpui, ecpu0, ecpu1):
    ti, _, _, ei = scrapes(d, "idle")
    t0, n0, _, e0 = scrapes(d, "before")
    t1, n1, b1, e1 = scrapes(d, "after")
    ok = _successful(d)
    out = []
    kv = lambda k, v: out.append("%s=%s" % (k, v))  # noqa: E731
    by = pdelta(n0, n1, "trunkline_cluster_replication_bytes_total")
    ba = pdelta(n0, n1, "trunkline_cluster_replication_batches_total")
    if ok and by is not None and ba is not None:
        kv("replication_bytes_fixed_run", "%d" % by)
        kv("replication_batches_fixed_run", "%d" % ba)
        kv("replication_bytes_per_call", "%.1f" % (by / ok))
        kv("replication_batches_per_call", "%.4f" % (ba / ok))
        kv("replication_batches_per_s", "%.1f" % (ba / (t1 - t0)))
    kv("replication_dropped", fnum(psum(n1, "trunkline_cluster_replication_dropped")))
    kv("buddy_replicas_left_after_run", fnum(psum(b1, "trunkline_cluster_replicas_held")))
    # CPU over the calls, and net of what the process burns idle (membership, raft ticks,
    # keep-alives) at the rate measured over the idle window before them.
    for who, ci, c0, c1 in (("buddy", bcpui, bcpu0, bcpu1), ("etcd", ecpui, ecpu0, ecpu1)):
        if not (ok and c0 and c1):
            continue
        run = float(c1) - float(c0)
        kv("%s_cpu_per_1000" % who, "%.4f" % (1000 * run / ok))
        if ci and ti and t0 and t1:
            idle = (float(c0) - float(ci)) / (t0 - ti) * (t1 - t0)
            kv("%s_cpu_seconds_run" % who, "%.2f" % run)
            kv("%s_cpu_seconds_expected_idle" % who, "%.2f" % idle)
            kv("%s_cpu_per_1000_net_of_idle" % who, "%.4f" % (1000 * (run - idle) / ok))
    idle = pdelta(ei, e0, "grpc_server_msg_received_total")
    run = pdelta(e0, e1, "grpc_server_msg_received_total")
    if idle is not None and run is not None and ti and t0 and t1 and ok:
        rate = idle / (t0 - ti)
        expected = rate * (t1 - t0)
        kv("etcd_idle_window_s", "%.2f" % (t0 - ti))
        kv("etcd_run_window_s", "%.2f" % (t1 - t0))
        kv("etcd_requests_idle", "%d" % idle)
        kv("etcd_requests_idle_per_s", "%.3f" % rate)
        kv("etcd_requests_run", "%d" % run)
        kv("etcd_requests_run_expected_from_idle", "%.1f" % expected)
        kv("etcd_requests_per_call", "%.5f" % ((run - expected) / ok))
        kv("etcd_requests_by_method_idle", fmt_methods(etcd_by_method(ei, e0)))
        kv("etcd_requests_by_method_run", fmt_methods(etcd_by_method(e0, e1)))
        kv("etcd_mvcc_ops_idle", ", ".join("%s %s" % (m, fnum(pdelta(ei, e0, "etcd_mvcc_%s_total" % m))) for m in MVCC))
        kv("etcd_mvcc_ops_run", ", ".join("%s %s" % (m, fnum(pdelta(e0, e1, "etcd_mvcc_%s_total" % m))) for m in MVCC))
        rb = pdelta(e0, e1, "etcd_network_client_grpc_received_bytes_total")
        ib = pdelta(ei, e0, "etcd_network_client_grpc_received_bytes_total")
        if rb is not None and ib is not None:
            kv("etcd_client_bytes_per_call", "%.2f" % ((rb - ib / (t0 - ti) * (t1 - t0)) / ok))
    print("\n".join(out))


def clusterhold(d, base, held, est):
    t0, n0, b0, _ = scrapes(d, "before")
    t1, n1, b1, _ = scrapes(d, "after")
    out = []
    kv = lambda k, v: out.append("%s=%s" % (k, v))  # noqa: E731
    replicas = psum(b1, "trunkline_cluster_replicas_held")
    owned = psum(n1, "trunkline_cluster_replicated_calls")
    kv("buddy_replicas_held", fnum(replicas))
    kv("node_replicated_calls_held", fnum(owned))
    try:
        pss0, rss0 = map(int, base.split())
        pss1, rss1 = map(int, held.split())
    except ValueError:
        pss0 = None
    if pss0 is not None:
        kv("buddy_pss_kib_before", pss0)
        kv("buddy_pss_kib_held", pss1)
        kv("buddy_rss_kib_before", rss0)
        kv("buddy_rss_kib_held", rss1)
        if replicas:
            kv("buddy_rss_kib_per_replica", "%.3f" % ((rss1 - rss0) / replicas))
            kv("buddy_pss_kib_per_replica", "%.3f" % ((pss1 - pss0) / replicas))
    by = pdelta(n0, n1, "trunkline_cluster_replication_bytes_total")
    if by is not None and replicas:
        kv("replication_bytes_per_held_call", "%.1f" % (by / replicas))
    kv("replication_dropped_hold", fnum(psum(n1, "trunkline_cluster_replication_dropped")))
    print("\n".join(out))


# ---------------------------------------------------------------- report
def load_env(path):
    d = {}
    if os.path.exists(path):
        for line in open(path):
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                d[k] = v
    return d


def fnum(v, fmt="%.0f"):
    try:
        return fmt % float(v)
    except (TypeError, ValueError):
        return "—" if v in (None, "", "None") else str(v)


LABELS = {
    "sipp": "SIPp uac → uas directly (reference: load-generator ceiling)",
    "kamailio-dialog": "Kamailio 5.6 + dialog (stateful proxy, no media)",
    "kamailio-rtpengine": "Kamailio 5.6 + dialog + rtpengine 10.5 (userspace, every call anchored)",
    "trunkline": "trunkline, media off",
    "trunkline-media": "trunkline, media anchored (default configuration)",
    "kamailio": "Kamailio 5.6 + dialog + topos (redis)",
    "trunkline-watch10": "trunkline, media off, 10 admin API watchers streaming every event",
    "trunkline-listcalls": "trunkline, media off, ListCalls polled over 10 000 held calls",
    "trunkline-hold": "trunkline, media off, standalone, calls held (baseline of trunkline-cluster)",
    "trunkline-cluster": "trunkline, media off, cluster mode: replication to a buddy, etcd",
    "trunkline-auth": "trunkline, media off, every caller proves a trunk's digest credentials",
    "kamailio-auth": "Kamailio 5.6 + dialog + auth (every INVITE challenged, pv_proxy_authenticate)",
    "trunkline-tcp": "trunkline, media off, SIP over TCP on both legs (one connection each)",
    "trunkline-tls": "trunkline, media off, SIP over TLS on both legs (stunnel beside SIPp, not counted)",
}

# (numerator, denominator, target): sustained calls/s ratios the issue sets.
RATIOS = [
    ("trunkline-media", "kamailio-rtpengine", 3.0),
    ("trunkline", "kamailio-dialog", 1.0),
    ("trunkline", "kamailio", 1.0),
    # Replication on must cost at most 10 % of the calls/s: against the standalone node with
    # the same held calls (like for like), and against the trunkline row (calls not held).
    ("trunkline-cluster", "trunkline-hold", 0.90),
    ("trunkline-cluster", "trunkline", 0.90),
    # Digest auth may cost trunkline at most 15 % of its calls/s, and keep it ahead of
    # Kamailio doing the same auth.
    ("trunkline-auth", "trunkline", 0.85),
    ("trunkline-auth", "kamailio-auth", 1.0),
]
# The admin API must not slow the call path: calls/s with 10 watchers, as a share of the
# idle API's; and a 500-call ListCalls page over 10 000 calls.
WATCH_RATIO_TARGET = 0.95
LISTCALLS_TARGET_MS = 50.0
MEDIA_CPU_TARGET = 0.35  # trunkline-media CPU s per 1000 calls
MEMORY_TARGET_KIB = 16


def steps_of(out, s):
    paths = sorted(glob.glob(os.path.join(out, s, "search", "step-*", "step.json")),
                   key=lambda p: os.path.getmtime(p))
    return [json.load(open(p)) for p in paths]


def round_dirs(out):
    """The run's round directories in order (ROUNDS > 1), or the run itself (one round)."""
    found = []
    for p in glob.glob(os.path.join(out, "round-*")):
        try:
            found.append((int(os.path.basename(p)[len("round-"):]), p))
        except ValueError:
            pass
    return [p for _, p in sorted(found)] or [out]


# Figures that move with the host's load: a run of several rounds reports their median.
MEDIAN_KEYS = ("sustained", "cpu_per_1000", "p50_ms", "p99_ms", "kib_per_call", "rss_kib_per_call")


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def _short(x):
    return ("%.4f" % x).rstrip("0").rstrip(".")


def combine_rounds(envs):
    """One summary from every round's: the median of each figure in MEDIAN_KEYS (and of the
    CPU shares), with every round's value beside it under <key>_by_round; other keys as
    they are when the rounds agree, else each round's value."""
    out = {}
    keys = []
    for e in envs:
        keys += [k for k in e if k not in keys]
    for k in keys:
        have = [(i, e[k]) for i, e in enumerate(envs) if k in e]
        if k in MEDIAN_KEYS or k.startswith("cpu_per_1000_of_which_"):
            try:
                out[k] = _short(_median([float(v) for _, v in have]))
                if len(envs) > 1:
                    out[k + "_by_round"] = ", ".join(e.get(k, "—") for e in envs)
                continue
            except ValueError:
                pass
        vals = [v for _, v in have]
        if len(envs) == 1 or (len(set(vals)) == 1 and len(vals) == len(envs)):
            out[k] = vals[0]
        else:
            out[k] = "; ".join("round %d: %s" % (i + 1, v) for i, v in have)
    return out


def cluster_verdicts(e, params):
    """What replication costs, from the trunkline-cluster row's summary."""
    v = []
    hold = params.get("cluster_hold_ms", "?")
    ok = e.get("fixed_rate_successful_calls", "?")
    v.append("trunkline-cluster CPU s per 1000 calls (fixed-rate run, calls held %s ms): node %s, "
             "buddy %s (net of its idle %s), etcd %s (net of its idle %s)" % (
                 hold, fnum(e.get("cpu_per_1000"), "%.3f"),
                 fnum(e.get("buddy_cpu_per_1000"), "%.3f"), fnum(e.get("buddy_cpu_per_1000_net_of_idle"), "%.3f"),
                 fnum(e.get("etcd_cpu_per_1000"), "%.3f"), fnum(e.get("etcd_cpu_per_1000_net_of_idle"), "%.3f")))
    v.append("**trunkline-cluster replication per call: %s bytes, %s batches** (fixed-rate run, %s "
             "calls; %s batches/s; dropped %s; replicas left on the buddy after the run %s)" % (
                 fnum(e.get("replication_bytes_per_call"), "%.0f"),
                 fnum(e.get("replication_batches_per_call"), "%.4f"), ok,
                 fnum(e.get("replication_batches_per_s"), "%.1f"), e.get("replication_dropped", "?"),
                 e.get("buddy_replicas_left_after_run", "?")))
    if e.get("buddy_rss_kib_per_replica"):
        v.append("**trunkline-cluster buddy memory per replica held: %s KiB RSS (%s KiB PSS)** "
                 "over %s replicas (the node under test: %s KiB PSS per established call)" % (
                     fnum(e.get("buddy_rss_kib_per_replica"), "%.2f"),
                     fnum(e.get("buddy_pss_kib_per_replica"), "%.2f"),
                     e.get("buddy_replicas_held", "?"), fnum(e.get("kib_per_call"), "%.2f")))
    try:
        r = float(e["etcd_requests_per_call"])
        v.append("**trunkline-cluster etcd requests per call: %.4f** (target 0: %s; %s requests "
                 "during the calls against %s expected from the idle rate %s/s; by method: %s; "
                 "KV operations: %s)" % (
                     r, "met" if abs(r) < 0.01 else "NOT met", e.get("etcd_requests_run"),
                     e.get("etcd_requests_run_expected_from_idle"),
                     e.get("etcd_requests_idle_per_s"), e.get("etcd_requests_by_method_run"),
                     e.get("etcd_mvcc_ops_run")))
    except (KeyError, TypeError, ValueError):
        v.append("trunkline-cluster etcd requests per call: n/a")
    return v


def ratio_line(env, num, den, target, rounds=()):
    n = env.get(num, {}).get("sustained")
    d = env.get(den, {}).get("sustained")
    if num not in env or den not in env:
        return None
    try:
        r = float(n) / float(d)
    except (TypeError, ValueError):
        return "%s / %s sustained calls/s: n/a (both rows must be measured)" % (num, den)
    except ZeroDivisionError:
        return "%s / %s sustained calls/s: n/a (%s sustained nothing)" % (num, den, den)
    capped = [x for x in (num, den) if "search cap" in env[x].get("sustained_note", "")]
    note = " (%s reached the search cap: a bound, not a ratio)" % ", ".join(capped) if capped else ""
    if num == "trunkline-cluster" and den == "trunkline":
        note += " (not like for like: trunkline's calls end at once, trunkline-cluster's are held)"
    elif num == "trunkline-cluster":
        note += " (same call mix, replication on vs standalone)"
    if len(rounds) > 1:
        each = []
        for e in rounds:
            try:
                each.append("%.2f" % (float(e[num]["sustained"]) / float(e[den]["sustained"])))
            except (KeyError, TypeError, ValueError, ZeroDivisionError):
                each.append("—")
        note += " (of the rows' medians; round by round: %s)" % ", ".join(each)
    return "**%s / %s sustained calls/s: %.2f** (target ≥ %.2f: %s)%s" % (
        num, den, r, target, "met" if r >= target else "NOT met", note)


def report(out, systems):
    rows = []
    dirs = round_dirs(out)
    per_round = [{s: load_env(os.path.join(d, s, "summary.env")) for s in systems} for d in dirs]
    env = {s: combine_rounds([r[s] for r in per_round]) for s in systems}
    # a round's own report reads the run's parameters from the directory above it
    params = load_env(os.path.join(out, "params.env")) or load_env(os.path.join(out, "..", "params.env"))
    multi = len(dirs) > 1
    hdr = ("| system | sustained calls/s | p50 setup ms | p99 setup ms | CPU s / 1000 calls "
           "| KiB / established call | refused at the first failing step |")
    rows.append(hdr)
    rows.append("|---|---:|---:|---:|---:|---:|---|")
    for s in systems:
        e = env[s]
        if e.get("error"):
            rows.append("| %s | not measured: %s | | | | | |" % (LABELS.get(s, s), e["error"]))
            continue
        sus = fnum(e.get("sustained"))
        if multi:
            sus += " (%s)" % e.get("sustained_by_round", "")
        if e.get("sustained_note"):
            sus += " (%s)" % e["sustained_note"]
        cpu = fnum(e.get("cpu_per_1000"), "%.3f")
        if multi and e.get("cpu_per_1000_by_round"):
            cpu += " (%s)" % e["cpu_per_1000_by_round"]
        for k in sorted(e):
            if k.startswith("cpu_per_1000_of_which_") and not k.endswith("_by_round") and cpu != "—":
                cpu += " (%s %s)" % (k[len("cpu_per_1000_of_which_"):], fnum(e[k], "%.3f"))
        if s == "trunkline-cluster" and cpu != "—":
            cpu += " (+ buddy %s, + etcd %s)" % (fnum(e.get("buddy_cpu_per_1000"), "%.3f"),
                                                 fnum(e.get("etcd_cpu_per_1000"), "%.3f"))
        refused = []
        for d, r in zip(dirs, per_round):
            first_fail = r[s].get("first_failing_rate")
            for j in steps_of(d, s):
                if first_fail and "%g" % j["rate"] == first_fail and j.get("refused"):
                    refused.append("at %s/s: %s" % (first_fail, j["refused"]))
        refused = "; ".join(refused)
        rows.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            LABELS.get(s, s), sus, fnum(e.get("p50_ms")), fnum(e.get("p99_ms")), cpu,
            fnum(e.get("kib_per_call"), "%.2f"), refused))
    lines = ["# Trunkline signalling benchmark — %s" % params.get("started", "?"), ""]
    if multi:
        lines += ["%d rounds, each measuring every row once in turn: each figure is the median "
                  "of the rounds, every round's value in brackets (memory: round 1 only)."
                  % len(dirs), ""]
    lines += rows
    lines.append("")
    verdicts = []
    for num, den, target in RATIOS:
        line = ratio_line(env, num, den, target, per_round)
        if line:
            verdicts.append(line)
    if "trunkline-media" in env:
        try:
            c = float(env["trunkline-media"].get("cpu_per_1000"))
            each = env["trunkline-media"].get("cpu_per_1000_by_round")
            verdicts.append("**trunkline-media CPU s per 1000 calls: %.3f** (target ≤ %.2f: %s)%s" % (
                c, MEDIA_CPU_TARGET, "met" if c <= MEDIA_CPU_TARGET else "NOT met",
                " (median; round by round: %s)" % each if each else ""))
        except (TypeError, ValueError):
            verdicts.append("trunkline-media CPU s per 1000 calls: n/a")
    try:
        kib = float(env.get("trunkline", {}).get("kib_per_call"))
        verdicts.append("trunkline memory per established call: %.2f KiB (target ≤ %d KiB: %s)" % (
            kib, MEMORY_TARGET_KIB, "met" if kib <= MEMORY_TARGET_KIB else "NOT met"))
    except (TypeError, ValueError):
        pass
    # The 16 KiB target is the signalling node's. An anchored call also holds the relay's
    # session and four media sockets: it is set beside Kamailio + rtpengine's in the same run.
    try:
        kib = float(env.get("trunkline-media", {}).get("kib_per_call"))
        peer = env.get("kamailio-rtpengine", {}).get("kib_per_call")
        beside = " (Kamailio + rtpengine: %.2f KiB)" % float(peer) if peer else ""
        verdicts.append("trunkline-media memory per established call: %.2f KiB%s" % (kib, beside))
    except (TypeError, ValueError):
        pass
    if "trunkline-cluster" in env:
        verdicts += cluster_verdicts(env["trunkline-cluster"], params)
    # What the stream transports cost (no target): TLS against TCP, TCP against UDP.
    for num, den in (("trunkline-tls", "trunkline-tcp"), ("trunkline-tcp", "trunkline")):
        if num in env and den in env:
            try:
                verdicts.append("%s / %s: sustained calls/s %.2f, CPU s per 1000 calls %.2f" % (
                    num, den, float(env[num]["sustained"]) / float(env[den]["sustained"]),
                    float(env[num]["cpu_per_1000"]) / float(env[den]["cpu_per_1000"])))
            except (KeyError, TypeError, ValueError, ZeroDivisionError):
                verdicts.append("%s / %s: n/a" % (num, den))
    if "trunkline-watch10" in env and "trunkline" in env:
        try:
            r = float(env["trunkline-watch10"]["sustained"]) / float(env["trunkline"]["sustained"])
            verdicts.append("**trunkline-watch10 / trunkline sustained calls/s: %.3f** (target ≥ %.2f: %s)"
                            % (r, WATCH_RATIO_TARGET, "met" if r >= WATCH_RATIO_TARGET else "NOT met"))
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            verdicts.append("trunkline-watch10 / trunkline sustained calls/s: n/a")
        for d in dirs:
            try:
                alive = open(os.path.join(d, "trunkline-watch10", "fixed", "watchers-alive.txt")).read().strip()
                verdicts.append("trunkline-watch10: %s of %s watchers still streaming at the end of the "
                                "fixed-rate run%s (a watcher that falls behind is told and its stream "
                                "ends)" % (alive, params.get("admin_rows", "?").split()[0],
                                           " of " + os.path.basename(d) if multi else ""))
            except OSError:
                pass
    if "trunkline-listcalls" in env:
        ms = []
        paths = []
        for d in dirs:
            paths += glob.glob(os.path.join(d, "trunkline-listcalls", "*", "*", "listcalls-ms.txt"))
            paths += glob.glob(os.path.join(d, "trunkline-listcalls", "fixed", "listcalls-ms.txt"))
        for path in paths:
            for line in open(path):
                parts = line.split()
                if parts:
                    ms.append(float(parts[0]))
        if ms:
            ms.sort()
            p50, p99 = ms[len(ms) // 2], ms[min(len(ms) - 1, int(len(ms) * 0.99))]
            verdicts.append("**ListCalls, 500-call page of %s held calls: p50 %.1f ms, p99 %.1f ms, "
                            "max %.1f ms over %d polls** (target < %.0f ms: %s)" % (
                                params.get("admin_rows", "?").split("; ")[-1].split()[0], p50, p99,
                                ms[-1], len(ms), LISTCALLS_TARGET_MS,
                                "met" if p99 < LISTCALLS_TARGET_MS else "NOT met"))
        else:
            verdicts.append("ListCalls latency: n/a (no poll recorded)")
    # A rate search cut short by refusals measures whatever refused, not the system: say so.
    for s in systems:
        for j in [j for d in dirs for j in steps_of(d, s)]:
            if j.get("no_free_media_ports"):
                verdicts.append("WARNING: %s ran out of media ports at %g calls/s (%s): the range "
                                "was full of live calls, i.e. calls were piling up past the knee "
                                "(calls here hold no time), or the range is too small for the "
                                "calls held." % (s, j["rate"], j["refused"]))
                break
        for d in dirs:
            try:
                fixed = json.load(open(os.path.join(d, s, "fixed", "step.json")))
            except (OSError, ValueError):
                fixed = {}
            if fixed.get("media_sessions_left"):
                verdicts.append("WARNING: %s still held %d media sessions after every call of the "
                                "fixed-rate run%s had ended (sessions not deleted)." % (
                                    s, fixed["media_sessions_left"],
                                    " of " + os.path.basename(d) if multi else ""))
        fw = env[s].get("fixed_rate_warning")
        if fw:
            verdicts.append("WARNING: %s %s: its latency and CPU figures come from a run that did "
                            "not carry the fixed rate cleanly." % (s, fw))
    sipp = env.get("sipp", {}).get("sustained")
    try:
        for s in systems:
            v = env.get(s, {}).get("sustained")
            if s != "sipp" and v and float(v) >= 0.8 * float(sipp):
                verdicts.append("NOTE: %s reached ≥ 80 %% of the SIPp-direct ceiling (%s/s): the load "
                                "generator, not %s, is probably the limit." % (s, sipp, s))
    except (TypeError, ValueError):
        pass
    lines += verdicts
    lines += ["", "## How these were taken", ""]
    lines.append("- every call: INVITE with an SDP offer, 100/180, 200 with an SDP answer, ACK, BYE, "
                 "200; no RTP is sent, so the media rows measure setting media up and tearing it "
                 "down, not forwarding.")
    lines.append("- sustained: highest offered rate whose %s s step had < 0.1 %% failed calls "
                 "(never created, failed, or unfinished count as failed) and whose 200s arrived at "
                 "≥ 95 %% of the offered rate; steps doubled from the start rate, then bisected "
                 "%s times. Each step starts the system afresh%s." % (
                     params.get("step_secs", "?"), params.get("bisect", "?"), warm_up_text(params)))
    lines.append("- refused: calls answered 3xx-6xx, one per Call-ID and status, from SIPp's error "
                 "log (what the caller got); for trunkline also the node's own "
                 "trunkline_calls_total by status and 'no free media ports' lines in its log.")
    lines.append("- p50/p99 setup: INVITE sent → 200 received (SIPp rtd, whole ms), every call of a "
                 "fixed-rate run at %s calls/s for %s s (same rate for every system)." % (
                     params.get("fixed_rate", "?"), params.get("fixed_secs", "?")))
    lines.append("- CPU: utime+stime from /proc/<pid>/stat over that fixed-rate run, per 1000 "
                 "successful calls, summed over every process of the system: Kamailio's main "
                 "process and all its workers plus its rtpengine (or redis), whose share is shown "
                 "in brackets; trunkline's one process (all threads).")
    lines.append("- memory: %s calls held (%s for the media rows: four media ports a call), offered "
                 "at %s calls/s; PSS from /proc/<pid>/smaps_rollup while held minus PSS just "
                 "before, divided by calls established (200 received), over the same processes "
                 "as CPU." % (params.get("hold_calls", "?"), params.get("media_hold_calls", "?"),
                              params.get("hold_rate", "?")))
    lines += ["", "## Details", ""]
    for s in systems:
        e = env[s]
        lines.append("### %s" % LABELS.get(s, s))
        lines.append("")
        for key in sorted(e):
            lines.append("- %s: %s" % (key, e[key]))
        for d in dirs:
            steps = steps_of(d, s)
            if steps and multi:
                lines.append("")
                lines.append("%s:" % os.path.basename(d))
            if steps:
                lines.append("")
                lines.append("| step rate | result | failed % | 200s/s | p50 ms | p99 ms | refused "
                             "| media sessions left | why |")
                lines.append("|---:|---|---:|---:|---:|---:|---|---:|---|")
                for j in steps:
                    left = j.get("media_sessions_left")
                    lines.append("| %g | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                        j["rate"], "pass" if j["pass"] else "FAIL", j["fail_pct"], j["achieved_rate"],
                        j["p50_ms"], j["p99_ms"], j.get("refused", ""), "" if left is None else left,
                        j["why"]))
            if s == "trunkline-cluster" and steps:
                lines.append("")
                lines.append("| step rate | replication bytes / call | batches / s | dropped "
                             "| replicas left on the buddy | etcd requests in the step (raw, idle included) |")
                lines.append("|---:|---:|---:|---:|---:|---|")
                for p in sorted(glob.glob(os.path.join(d, s, "search", "step-*", "cluster.json")),
                                key=lambda p: os.path.getmtime(p)):
                    c = json.load(open(p))
                    rate = os.path.basename(os.path.dirname(p))[len("step-"):]
                    lines.append("| %s | %s | %s | %s | %s | %s (%s) |" % (
                        rate, fnum(c.get("replication_bytes_per_call")),
                        fnum(c.get("replication_batches_per_s"), "%.1f"), fnum(c.get("replication_dropped")),
                        fnum(c.get("buddy_replicas_left")), fnum(c.get("etcd_requests")),
                        fmt_methods(c.get("etcd_requests_by_method") or {})))
        lines.append("")
    lines += ["## Parameters", ""]
    for key in sorted(params):
        lines.append("- %s: %s" % (key, params[key]))
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "results.md"), "w") as fh:
        fh.write(text)
    print("\n".join(rows))
    print()
    print("\n".join(verdicts))


# ---------------------------------------------------------------- takeover (load/takeover.sh)
def _ts(s):
    from datetime import datetime
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def json_log(path):
    """The JSON events of a node's log (other lines skipped)."""
    out = []
    try:
        fh = open(path, errors="replace")
    except OSError:
        return out
    with fh:
        for line in fh:
            if not line.startswith("{"):
                continue
            try:
                ev = json.loads(line)
                ev["_t"] = _ts(ev["timestamp"])
            except (ValueError, KeyError):
                continue
            out.append(ev)
    return out


def sipp_stats(d, prefix):
    files = [f for f in glob.glob(os.path.join(d, prefix + "*.csv")) if not f.endswith("_rtt.csv")]
    if not files:
        return {}
    rows = [r for r in csv.reader(open(files[0], newline=""), delimiter=";") if r]
    return dict(zip(rows[0], rows[-1])) if len(rows) >= 2 else {}


def sipp_error_lines(d):
    n = 0
    for f in glob.glob(os.path.join(d, "*_errors.log*")):
        with open(f, "rb") as fh:
            n += sum(1 for line in fh if line.strip())
    return n


def dist(values):
    if not values:
        return {"n": 0}
    return {"n": len(values), "min": min(values), "p50": pct(values, 50), "p99": pct(values, 99),
            "max": max(values)}


def fdist(d, unit="s"):
    if not d.get("n"):
        return "n/a (no samples)"
    return "p50 %.3f %s, p99 %.3f %s, max %.3f %s (min %.3f, n=%d)" % (
        d["p50"], unit, d["p99"], unit, d["max"], unit, d["min"], d["n"])


def takeover(out, dead, survivors):
    params = load_env(os.path.join(out, "params.env"))
    calls = int(params.get("calls", "0"))
    kill = float(open(os.path.join(out, "kill.time")).read())
    res = {"calls": calls, "dead": dead, "nodes": {}}
    per_call, kill_to_adopted, gone_to_start, problems = [], [], [], []
    adopted_ids = set()
    for node in survivors:
        evs = json_log(os.path.join(out, node + ".log"))
        gone = next((e for e in evs if e.get("message", "").startswith("cluster: node is gone")
                     and e.get("owner") == dead), None)
        left = next((e for e in evs if e.get("message") == "cluster: node left"
                     and e.get("node") == dead), None)
        starts = {e["call"]: e["_t"] for e in evs if e.get("message") == "adopting a call" and "call" in e}
        done = {}
        for e in evs:
            if e.get("message") == "call adopted: both legs moved here" and "call" in e:
                done.setdefault(e["call"], e["_t"])
        refused = sum(1 for e in evs if str(e.get("message", "")).startswith("adoption refused by a leg"))
        n = {"adopted_lines": len(done), "adopting_started_lines": len(starts),
             "refused_by_a_leg_lines": refused}
        m = prom(os.path.join(out, node + "-metrics-end.txt")) or \
            prom(os.path.join(out, node + "-metrics-after.txt"))
        n["metric_adopted_total"] = psum(m, "trunkline_cluster_calls_adopted_total")
        n["metric_lost_total"] = psum(m, "trunkline_cluster_calls_lost_total")
        mb = prom(os.path.join(out, node + "-metrics-before-kill.txt"))
        n["replicas_held_before_kill"] = psum(mb, "trunkline_cluster_replicas_held")
        if left:
            n["kill_to_left_s"] = round(left["_t"] - kill, 4)
        if gone:
            n["kill_to_gone_s"] = round(gone["_t"] - kill, 4)
            n["gone_says_adopting"] = gone.get("adopting")
            n["gone_says_left_to_others"] = gone.get("left_to_others")
            for cid, t in done.items():
                per_call.append(t - gone["_t"])
            for cid, t in starts.items():
                gone_to_start.append(t - gone["_t"])
            if done:
                n["gone_to_last_adopted_s"] = round(max(done.values()) - gone["_t"], 4)
        elif done:
            problems.append("%s adopted %d calls but logged no 'node is gone' line for %s" % (node, len(done), dead))
        for cid, t in done.items():
            kill_to_adopted.append(t - kill)
            if cid in adopted_ids:
                problems.append("call %s adopted twice" % cid)
            adopted_ids.add(cid)
        res["nodes"][node] = n
    res["takeover_s"] = dist(per_call)
    res["kill_to_adopted_s"] = dist(kill_to_adopted)
    res["gone_to_adopting_started_s"] = dist(gone_to_start)
    gones = [n["kill_to_gone_s"] for n in res["nodes"].values() if "kill_to_gone_s" in n]
    lefts = [n["kill_to_left_s"] for n in res["nodes"].values() if "kill_to_left_s" in n]
    res["kill_to_gone_s"] = gones
    res["kill_to_left_s"] = lefts
    res["adopted_calls_logged"] = len(adopted_ids)
    madopt = sum(n["metric_adopted_total"] or 0 for n in res["nodes"].values())
    mlost = sum(n["metric_lost_total"] or 0 for n in res["nodes"].values())
    res["adopted_metric_total"] = madopt
    res["lost_metric_total"] = mlost
    uac = sipp_stats(os.path.join(out, "uac"), "uac_")
    uas = sipp_stats(os.path.join(out, "uas"), "uas_")
    res["sipp"] = {
        "uac_successful": _int(uac.get("SuccessfulCall(C)"), None), "uac_failed": _int(uac.get("FailedCall(C)"), None),
        "uac_created": _int(uac.get("TotalCallCreated"), None),
        "uas_successful": _int(uas.get("SuccessfulCall(C)"), None), "uas_failed": _int(uas.get("FailedCall(C)"), None),
        "uac_error_lines": sipp_error_lines(os.path.join(out, "uac")),
        "uas_error_lines": sipp_error_lines(os.path.join(out, "uas")),
        "uac_rc": params.get("uac_rc"), "uas_rc": params.get("uas_rc"),
    }
    if len(adopted_ids) != calls:
        problems.append("%d of %d calls logged 'call adopted'" % (len(adopted_ids), calls))
    if madopt != calls or mlost:
        problems.append("metrics: %d adopted, %d lost (of %d)" % (madopt, mlost, calls))
    sp = res["sipp"]
    if sp["uac_successful"] != calls or sp["uac_failed"]:
        problems.append("SIPp caller: %s successful, %s failed of %d" % (sp["uac_successful"], sp["uac_failed"], calls))
    if sp["uas_successful"] != calls or sp["uas_failed"]:
        problems.append("SIPp callee: %s successful, %s failed of %d" % (sp["uas_successful"], sp["uas_failed"], calls))
    res["problems"] = problems
    with open(os.path.join(out, "takeover.json"), "w") as fh:
        json.dump(res, fh, indent=1)
    lines = ["# Trunkline takeover — %s" % params.get("started", "?"), ""]
    lines.append("%d calls through %s (placed at %s calls/s, media %s), lease_ttl_secs %s; %s killed "
                 "with SIGKILL once every call was replicated." % (
                     calls, dead, params.get("rate"), "anchored" if params.get("media") == "1" else "off",
                     params.get("lease_ttl_secs"), dead))
    lines.append("")
    lines.append("- **takeover per call, 'node is gone' → 'call adopted' (both legs re-INVITEd, 200, ACK): "
                 "%s**" % fdist(res["takeover_s"]))
    lines.append("- **kill → 'node is gone'** (lease expiry + the survivor's look and probe): %s" % (
        ", ".join("%s %.3f s" % (k, v["kill_to_gone_s"]) for k, v in res["nodes"].items() if "kill_to_gone_s" in v)
        or "n/a"))
    lines.append("- kill → 'cluster: node left' (the survivor's watch saw the lease expire): %s" % (
        ", ".join("%s %.3f s" % (k, v["kill_to_left_s"]) for k, v in res["nodes"].items() if "kill_to_left_s" in v)
        or "n/a"))
    lines.append("- kill → 'call adopted' per call: %s" % fdist(res["kill_to_adopted_s"]))
    lines.append("- 'node is gone' → 'adopting a call' (re-INVITEs about to go out) per call: %s" %
                 fdist(res["gone_to_adopting_started_s"]))
    lines.append("- adopted: %d calls in the logs, %d by the metrics (lost %d); per survivor: %s" % (
        len(adopted_ids), madopt, mlost, "; ".join(
            "%s held %s, adopting %s, adopted %s (metric %s), refused by a leg %s" % (
                k, fnum(v.get("replicas_held_before_kill")), v.get("gone_says_adopting", "?"),
                v["adopted_lines"], fnum(v["metric_adopted_total"]), v["refused_by_a_leg_lines"])
            for k, v in res["nodes"].items())))
    lines.append("- SIPp caller: %s created, %s successful, %s failed (exit %s; %d error-log lines); callee: "
                 "%s successful, %s failed (exit %s; %d error-log lines)" % (
                     sp["uac_created"], sp["uac_successful"], sp["uac_failed"], sp["uac_rc"],
                     sp["uac_error_lines"], sp["uas_successful"], sp["uas_failed"], sp["uas_rc"],
                     sp["uas_error_lines"]))
    lines.append("")
    lines.append("**%s**" % ("all %d calls adopted and completed by both SIPp ends" % calls if not problems
                             else "PROBLEMS: " + "; ".join(problems)))
    lines += ["", "## Parameters", ""]
    for key in sorted(params):
        lines.append("- %s: %s" % (key, params[key]))
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "results.md"), "w") as fh:
        fh.write(text)
    print("\n".join(lines[:lines.index("## Parameters") - 1]))
    return 0 if not problems else 1


def bound(pid, ports):
    """Whether process `pid` itself listens on every TCP port in `ports` (so a stale
    process of an earlier run holding one is not taken for it)."""
    inodes = set()
    try:
        for fd in os.listdir("/proc/%s/fd" % pid):
            try:
                link = os.readlink("/proc/%s/fd/%s" % (pid, fd))
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return False
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if len(f) > 9 and f[3] == "0A" and f[9] in inodes:
                listening.add(int(f[1].rsplit(":", 1)[1], 16))
    return all(int(p) in listening for p in ports)


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    cmd, a = argv[1], argv[2:]
    if cmd == "judge":
        judge(a[0], a[1], a[2])
    elif cmd == "noports":
        n = no_port_lines(a[0])
        print(0 if n is None else n)
    elif cmd == "tree":
        print(" ".join(str(p) for p in tree(a)))
    elif cmd == "cpu":
        print("%.2f" % cpu_seconds(a))
    elif cmd == "pss":
        print("%d %d" % pss_kib(a))
    elif cmd == "rttcount":
        print(len(rtt_samples(a[0])))
    elif cmd == "stat":
        print(last_stats(a[0]).get(a[1], ""))
    elif cmd == "clusterstep":
        clusterstep(a[0])
    elif cmd == "clusterfixed":
        clusterfixed(a[0], *a[1:7])
    elif cmd == "clusterhold":
        clusterhold(a[0], a[1], a[2], a[3])
    elif cmd == "report":
        report(a[0], a[1:])
    elif cmd == "bound":
        return 0 if bound(a[0], a[1:]) else 1
    elif cmd == "takeover":
        return takeover(a[0], a[1], a[2:])
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
