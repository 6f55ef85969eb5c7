#!/usr/bin/env python3
"""Arithmetic for load/bench.sh (standard library only).

Subcommands:
  judge STEPDIR RATE SECS      judge one rate-search step from the SIPp uac
                               files in STEPDIR; prints "PASS|FAIL <fields>"
                               and writes STEPDIR/step.json
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
    res = {
        "rate": rate, "secs": secs, "target": target, "created": created,
        "successful": ok, "failed": failed, "lost": lost,
        "fail_pct": round(100 * fail_frac, 4), "achieved_rate": round(achieved, 1),
        "retransmissions": _int(st.get("Retransmissions(C)")),
        "p50_ms": pct(rtts, 50), "p99_ms": pct(rtts, 99), "samples": len(rtts),
        "pass": not reasons, "why": "; ".join(reasons),
    }
    with open(os.path.join(d, "step.json"), "w") as fh:
        json.dump(res, fh, indent=1)
    print("%s created=%d ok=%d failed=%.3f%% 200s=%.0f/s p50=%s p99=%s %s" % (
        "PASS" if res["pass"] else "FAIL", created, ok, res["fail_pct"], achieved,
        fnum(res["p50_ms"], "%.0fms"), fnum(res["p99_ms"], "%.0fms"), res["why"]))


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
    "kamailio": "Kamailio 5.6 + dialog + topos (redis)",
    "trunkline": "trunkline",
}


def report(out, systems):
    rows = []
    env = {s: load_env(os.path.join(out, s, "summary.env")) for s in systems}
    params = load_env(os.path.join(out, "params.env"))
    hdr = "| system | sustained calls/s | p50 setup ms | p99 setup ms | CPU s / 1000 calls | KiB / established call |"
    rows.append(hdr)
    rows.append("|---|---:|---:|---:|---:|---:|")
    for s in systems:
        e = env[s]
        if e.get("error"):
            rows.append("| %s | not measured: %s | | | | |" % (LABELS.get(s, s), e["error"]))
            continue
        sus = fnum(e.get("sustained"))
        if e.get("sustained_note"):
            sus += " (%s)" % e["sustained_note"]
        rows.append("| %s | %s | %s | %s | %s | %s |" % (
            LABELS.get(s, s), sus, fnum(e.get("p50_ms")), fnum(e.get("p99_ms")),
            fnum(e.get("cpu_per_1000"), "%.3f"), fnum(e.get("kib_per_call"), "%.2f")))
    lines = ["# Trunkline signalling benchmark — %s" % params.get("started", "?"), ""]
    lines += rows
    lines.append("")
    k = env.get("kamailio", {}).get("sustained")
    t = env.get("trunkline", {}).get("sustained")
    try:
        ratio = float(t) / float(k)
        verdict = "target met" if ratio >= 1 else "target NOT met"
        lines.append("**trunkline / Kamailio sustained calls/s: %.2f** (target ≥ 1.00: %s)" % (ratio, verdict))
    except (TypeError, ValueError, ZeroDivisionError):
        lines.append("trunkline / Kamailio sustained calls/s: n/a (both systems must be measured)")
    try:
        kib = float(env.get("trunkline", {}).get("kib_per_call"))
        lines.append("trunkline memory per established call: %.2f KiB (target ≤ 16 KiB: %s)" % (
            kib, "met" if kib <= 16 else "NOT met"))
    except (TypeError, ValueError):
        pass
    sipp = env.get("sipp", {}).get("sustained")
    try:
        for s in ("kamailio", "trunkline"):
            v = env.get(s, {}).get("sustained")
            if v and float(v) >= 0.8 * float(sipp):
                lines.append("NOTE: %s reached ≥ 80 %% of the SIPp-direct ceiling (%s/s): the load "
                             "generator, not %s, is probably the limit." % (s, sipp, s))
    except (TypeError, ValueError):
        pass
    lines += ["", "## How these were taken", ""]
    lines.append("- sustained: highest offered rate whose %s s step had < 0.1 %% failed calls "
                 "(never created, failed, or unfinished count as failed) and whose 200s arrived at "
                 "≥ 95 %% of the offered rate; steps doubled from the start rate, then bisected "
                 "%s times." % (params.get("step_secs", "?"), params.get("bisect", "?")))
    lines.append("- p50/p99 setup: INVITE sent → 200 received (SIPp rtd, whole ms), every call of a "
                 "fixed-rate run at %s calls/s for %s s (same rate for every system)." % (
                     params.get("fixed_rate", "?"), params.get("fixed_secs", "?")))
    lines.append("- CPU: utime+stime from /proc/<pid>/stat over that fixed-rate run, per 1000 "
                 "successful calls (Kamailio: all its processes plus its redis; trunkline: its one process).")
    lines.append("- memory: %s calls held (offered at %s calls/s), PSS from /proc/<pid>/smaps_rollup "
                 "while held minus PSS just before, divided by calls established (200 received). "
                 "Kamailio: all its processes plus its redis (topos state lives there)." % (
                     params.get("hold_calls", "?"), params.get("hold_rate", "?")))
    lines += ["", "## Details", ""]
    for s in systems:
        e = env[s]
        lines.append("### %s" % LABELS.get(s, s))
        lines.append("")
        for key in sorted(e):
            lines.append("- %s: %s" % (key, e[key]))
        steps = sorted(glob.glob(os.path.join(out, s, "search", "step-*", "step.json")),
                       key=lambda p: os.path.getmtime(p))
        if steps:
            lines.append("")
            lines.append("| step rate | result | failed % | 200s/s | p50 ms | p99 ms | why |")
            lines.append("|---:|---|---:|---:|---:|---:|---|")
            for p in steps:
                j = json.load(open(p))
                lines.append("| %g | %s | %s | %s | %s | %s | %s |" % (
                    j["rate"], "pass" if j["pass"] else "FAIL", j["fail_pct"], j["achieved_rate"],
                    j["p50_ms"], j["p99_ms"], j["why"]))
        lines.append("")
    lines += ["## Parameters", ""]
    for key in sorted(params):
        lines.append("- %s: %s" % (key, params[key]))
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "results.md"), "w") as fh:
        fh.write(text)
    print("\n".join(rows))
    print()
    print("\n".join(l for l in lines[len(rows) + 2:] if l.startswith(("**", "trunkline", "NOTE"))))


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
