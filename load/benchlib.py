#!/usr/bin/env python3
"""Arithmetic for load/bench.sh (standard library only).

Subcommands:
  judge STEPDIR RATE SECS      judge one rate-search step from the SIPp uac
                               files in STEPDIR; prints "PASS|FAIL <fields>"
                               and writes STEPDIR/step.json.  Also counts the
                               calls refused with a final status (SIPp's error
                               log; trunkline's metrics.txt and log when there)
  tree PID...                  PIDs given plus all their live descendants
  cpu PID...                   sum of utime+stime (seconds) over those PIDs
  pss PID...                   sum of Pss and Rss (KiB) from smaps_rollup
  rttcount STEPDIR             number of INVITE->200 samples (= calls
                               established) written so far
  stat STEPDIR FIELD           last value of FIELD in the uac statistics csv
  report OUTDIR SYS...         print the final table and write results.md
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


def node_finals(d):
    """{status: calls} of trunkline's non-2xx finals from its metrics (None if not scraped)."""
    p = os.path.join(d, "metrics.txt")
    if not os.path.exists(p):
        return None
    out = {}
    for st, n in NODE_FINAL.findall(open(p).read()):
        if int(st) >= 300 and int(n) > 0:
            out[int(st)] = int(n)
    return out


def no_port_refusals(d):
    """Lines of trunkline's log saying the relay had no free media ports (None: no log)."""
    p = os.path.join(d, "trunkline.log")
    if not os.path.exists(p):
        return None
    with open(p, "rb") as fh:
        return fh.read().count(NO_PORTS)


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
    # calls never created or still open when SIPp stopped count as failed too
    lost = max(target - ok, failed)
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
}

# (numerator, denominator, target): sustained calls/s ratios the issue sets.
RATIOS = [
    ("trunkline-media", "kamailio-rtpengine", 3.0),
    ("trunkline", "kamailio-dialog", 1.0),
    ("trunkline", "kamailio", 1.0),
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


def ratio_line(env, num, den, target):
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
    capped = [x for x in (num, den) if env[x].get("sustained_note") == "search cap"]
    note = " (%s reached the search cap: a bound, not a ratio)" % ", ".join(capped) if capped else ""
    return "**%s / %s sustained calls/s: %.2f** (target ≥ %.2f: %s)%s" % (
        num, den, r, target, "met" if r >= target else "NOT met", note)


def report(out, systems):
    rows = []
    env = {s: load_env(os.path.join(out, s, "summary.env")) for s in systems}
    params = load_env(os.path.join(out, "params.env"))
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
        if e.get("sustained_note"):
            sus += " (%s)" % e["sustained_note"]
        cpu = fnum(e.get("cpu_per_1000"), "%.3f")
        for k in sorted(e):
            if k.startswith("cpu_per_1000_of_which_") and cpu != "—":
                cpu += " (%s %s)" % (k[len("cpu_per_1000_of_which_"):], fnum(e[k], "%.3f"))
        first_fail = e.get("first_failing_rate")
        refused = ""
        for j in steps_of(out, s):
            if first_fail and "%g" % j["rate"] == first_fail:
                refused = ("at %s/s: %s" % (first_fail, j["refused"])) if j.get("refused") else ""
        rows.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            LABELS.get(s, s), sus, fnum(e.get("p50_ms")), fnum(e.get("p99_ms")), cpu,
            fnum(e.get("kib_per_call"), "%.2f"), refused))
    lines = ["# Trunkline signalling benchmark — %s" % params.get("started", "?"), ""]
    lines += rows
    lines.append("")
    verdicts = []
    for num, den, target in RATIOS:
        line = ratio_line(env, num, den, target)
        if line:
            verdicts.append(line)
    if "trunkline-media" in env:
        try:
            c = float(env["trunkline-media"].get("cpu_per_1000"))
            verdicts.append("**trunkline-media CPU s per 1000 calls: %.3f** (target ≤ %.2f: %s)" % (
                c, MEDIA_CPU_TARGET, "met" if c <= MEDIA_CPU_TARGET else "NOT met"))
        except (TypeError, ValueError):
            verdicts.append("trunkline-media CPU s per 1000 calls: n/a")
    for s in ("trunkline", "trunkline-media"):
        try:
            kib = float(env.get(s, {}).get("kib_per_call"))
            verdicts.append("%s memory per established call: %.2f KiB (target ≤ %d KiB: %s)" % (
                s, kib, MEMORY_TARGET_KIB, "met" if kib <= MEMORY_TARGET_KIB else "NOT met"))
        except (TypeError, ValueError):
            pass
    if "trunkline-watch10" in env and "trunkline" in env:
        try:
            r = float(env["trunkline-watch10"]["sustained"]) / float(env["trunkline"]["sustained"])
            verdicts.append("**trunkline-watch10 / trunkline sustained calls/s: %.3f** (target ≥ %.2f: %s)"
                            % (r, WATCH_RATIO_TARGET, "met" if r >= WATCH_RATIO_TARGET else "NOT met"))
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            verdicts.append("trunkline-watch10 / trunkline sustained calls/s: n/a")
        try:
            alive = open(os.path.join(out, "trunkline-watch10", "fixed", "watchers-alive.txt")).read().strip()
            verdicts.append("trunkline-watch10: %s of %s watchers still streaming at the end of the "
                            "fixed-rate run (a watcher that falls behind is told and its stream ends)"
                            % (alive, params.get("admin_rows", "?").split()[0]))
        except OSError:
            pass
    if "trunkline-listcalls" in env:
        ms = []
        for path in glob.glob(os.path.join(out, "trunkline-listcalls", "*", "*", "listcalls-ms.txt")) + \
                glob.glob(os.path.join(out, "trunkline-listcalls", "fixed", "listcalls-ms.txt")):
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
        for j in steps_of(out, s):
            if j.get("no_free_media_ports"):
                verdicts.append("WARNING: %s ran out of media ports at %g calls/s (%s): the range "
                                "was full of live calls, i.e. calls were piling up past the knee "
                                "(calls here hold no time), or the range is too small for the "
                                "calls held." % (s, j["rate"], j["refused"]))
                break
        try:
            fixed = json.load(open(os.path.join(out, s, "fixed", "step.json")))
        except (OSError, ValueError):
            fixed = {}
        if fixed.get("media_sessions_left"):
            verdicts.append("WARNING: %s still held %d media sessions after every call of the fixed-rate "
                            "run had ended (sessions not deleted)." % (s, fixed["media_sessions_left"]))
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
                 "%s times. Each step starts the system afresh." % (
                     params.get("step_secs", "?"), params.get("bisect", "?")))
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
        steps = steps_of(out, s)
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


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    cmd, a = argv[1], argv[2:]
    if cmd == "judge":
        judge(a[0], a[1], a[2])
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
    elif cmd == "report":
        report(a[0], a[1:])
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
