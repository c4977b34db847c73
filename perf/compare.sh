#!/usr/bin/env bash
# Side-by-side benchmark: ringsocks, Dante and microsocks against the same workloads direct,
# in one run, on loopback only. See perf/README.md.
#
#   perf/compare.sh [--quick] [--out DIR] [--only ringsocks,dante,microsocks] [--rounds N]
#                   [--duration S] [--idle N] [--workloads session,wrk,bulk,idle,udp] [--no-build]
#   perf/compare.sh --report DIR     rebuild DIR's table, JSON and chart from its raw.tsv
#
# Workloads (each a function wl_NAME; candidates interleaved round-robin within a workload):
#   session  socksbench session mode: connect, greet, CONNECT, GET /small, read to EOF, close
#   wrk      wrk -t1 -c32 keep-alive GET /small through `ringsocks tunnel` in front of each proxy
#   bulk     socksbench bulk mode: 4 clients downloading /large (256 MiB)
#   idle     N idle relays held through each proxy (perf/idlehold.py); RSS, PSS, pipes, kernel
#   udp      socksbench udp mode: UDP ASSOCIATE, datagrams to socksbench --udp-echo (no microsocks)
# Every proxy's CPU (utime+stime of all its processes and threads, reaped children included)
# is read from /proc before and after each measurement.
# Output in DIR: table.md (also printed), results.json (all raw numbers), chart.png, logs/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
START_TS=$(date +%s)
# Every python3 below is the system's when there is one: a version manager's shim in front of it
# (pyenv's) took half a second a call on one machine, against 60 ms, and a measurement makes
# several calls, which made --quick last 86 s instead of under a minute. Only the standard library
# is used.
PYTHON3=$(command -v /usr/bin/python3 || command -v python3 || echo python3)
python3() { "$PYTHON3" "$@"; }

# ------------------------------------------------------------------ options
QUICK=0 OUT='' ONLY=ringsocks,dante,microsocks ROUNDS='' DURATION='' IDLE_N='' WORKLOADS='' BUILD=1 REPORT_ONLY=''
usage() { sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --out) OUT=${2:?--out needs a directory}; shift ;;
    --out=*) OUT=${1#*=} ;;
    --only) ONLY=${2:?--only needs a list}; shift ;;
    --only=*) ONLY=${1#*=} ;;
    --rounds) ROUNDS=${2:?}; shift ;;
    --rounds=*) ROUNDS=${1#*=} ;;
    --duration) DURATION=${2:?}; shift ;;
    --duration=*) DURATION=${1#*=} ;;
    --idle) IDLE_N=${2:?}; shift ;;
    --idle=*) IDLE_N=${1#*=} ;;
    --workloads) WORKLOADS=${2:?}; shift ;;
    --workloads=*) WORKLOADS=${1#*=} ;;
    --no-build) BUILD=0 ;;
    --report) REPORT_ONLY=${2:?--report needs a results directory}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
DURATION_GIVEN=${DURATION:+1}
if [ "$QUICK" = 1 ]; then
  : "${ROUNDS:=1}" "${DURATION:=2}" "${IDLE_N:=2000}"
else
  : "${ROUNDS:=3}" "${DURATION:=5}" "${IDLE_N:=8000}"
fi
: "${WORKLOADS:=session,wrk,bulk,idle,udp}"
for v in ROUNDS DURATION IDLE_N; do
  [[ ${!v} =~ ^[0-9]+$ ]] && [ "${!v}" -gt 0 ] || { echo "compare.sh: bad $v '${!v}'" >&2; exit 2; }
done
[ "$DURATION" -le 120 ] || { echo "compare.sh: --duration is at most 120 s" >&2; exit 2; }
[ "$ROUNDS" -le 20 ] || { echo "compare.sh: --rounds is at most 20" >&2; exit 2; }
[ "$IDLE_N" -le 9000 ] || { echo "compare.sh: --idle is at most 9000 (RLIMIT_NOFILE 20000, two sockets a relay)" >&2; exit 2; }

# Tunables of the workloads (environment overrides; recorded in results.json).
SESSION_C=${SESSION_C:-32}       # socksbench session clients
SESSION_T=${SESSION_T:-1}        # socksbench threads
WRK_C=${WRK_C:-32}               # wrk connections (one thread)
BULK_C=${BULK_C:-4}              # bulk downloaders
BULK_T=${BULK_T:-2}              # socksbench threads for them
LARGE_MIB=${LARGE_MIB:-256}      # size of /large
SMALL_B=${SMALL_B:-100}          # size of /small
RS_WORKERS=${RS_WORKERS:-2}      # ringsocks -w
TUNNEL_WORKERS=${TUNNEL_WORKERS:-1}
DANTE_MOTHERS=${DANTE_MOTHERS:-1} # danted -N (its children are forked on demand)
IDLE_WAIT=${IDLE_WAIT:-2}        # seconds between "all established" and the measurement
UDP_C=${UDP_C:-8}                # socksbench udp clients (one association each)
UDP_T=${UDP_T:-1}                # socksbench threads for them
UDP_SIZE=${UDP_SIZE:-64}         # payload bytes a datagram
UDP_WINDOW=${UDP_WINDOW:-16}     # datagrams in flight per client
UDP_ECHO_T=${UDP_ECHO_T:-1}      # threads of the UDP echo server
UDP_D=${UDP_D:-}                 # seconds of a udp measurement (--duration; 1 with --quick alone)
if [ -z "$UDP_D" ]; then
  if [ "$QUICK" = 1 ] && [ -z "$DURATION_GIVEN" ]; then UDP_D=1; else UDP_D=$DURATION; fi
fi
[[ $UDP_D =~ ^[0-9]+$ ]] && [ "$UDP_D" -gt 0 ] && [ "$UDP_D" -le 120 ] || { echo "compare.sh: bad UDP_D '$UDP_D'" >&2; exit 2; }

# ringsocks-MODE runs ringsocks with --relay MODE (splice, splice-sqe, copy, hybrid), so the
# relay strategies can be compared side by side: --only ringsocks-splice,ringsocks-copy,...
# ringsocks-w1 is one worker pinned to CPU 0, ringsocks-w1u one worker not pinned,
# ringsocks-w2pin two workers pinned to CPUs 0,1,
# ringsocks-reno the default with --congestion reno on all its sockets (reno is allowed to every
# user, whatever net.ipv4.tcp_congestion_control says); ringsocks-system the default with
# --congestion system, the system's algorithm on every socket (by default ringsocks does not
# pace sockets to loopback peers when the system's algorithm is bbr).
# hev is hev-socks5-server (github.com/heiher/hev-socks5-server), which Debian does not package:
# it runs only when HEV_SOCKS5_SERVER names a binary you built yourself (this script does not
# fetch or build it), with RS_WORKERS workers like ringsocks.
ALL_PROXIES=(ringsocks dante microsocks hev ringsocks-splice ringsocks-splice-sqe ringsocks-copy ringsocks-hybrid
  ringsocks-w1 ringsocks-w1u ringsocks-w2pin ringsocks-reno ringsocks-system)
IFS=, read -r -a PROXIES <<<"$ONLY"
for p in "${PROXIES[@]}"; do
  case " ${ALL_PROXIES[*]} " in *" $p "*) ;; *) echo "compare.sh: unknown candidate '$p' (${ALL_PROXIES[*]})" >&2; exit 2 ;; esac
  if [ "$p" = hev ] && [ ! -x "${HEV_SOCKS5_SERVER:-}" ]; then
    echo "compare.sh: candidate hev needs HEV_SOCKS5_SERVER=/path/to/hev-socks5-server (a binary you built; not packaged by Debian)" >&2
    exit 2
  fi
done
IFS=, read -r -a WL <<<"$WORKLOADS"
CANDS=(direct "${PROXIES[@]}")
SUBJECT=${PROXIES[0]}
case " ${PROXIES[*]} " in *" ringsocks "*) SUBJECT=ringsocks ;; esac

say() { printf '[compare %3ds] %s\n' $(($(date +%s) - START_TS)) "$*" >&2; }
note() { say "NOTE: $*"; printf '%s\n' "$*" >>"$NOTES"; }
# record WORKLOAD CANDIDATE ROUND METRIC VALUE
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RAW"; }

# report DIR: table.md, results.json and chart.png from DIR/raw.tsv, DIR/notes.txt, DIR/meta.json.
report() {
python3 - "$1" "$1/meta.json" <<'PY'
import json, os, statistics, subprocess, sys
out, metaf = sys.argv[1], sys.argv[2]
meta = json.load(open(metaf))
cands = meta["candidates"].split(",")
proxies = [c for c in cands if c != "direct"]
subj = meta["subject"]
raw = []
for line in open(os.path.join(out, "raw.tsv")):
    wl, c, r, k, v = line.rstrip("\n").split("\t")
    try:
        raw.append({"workload": wl, "candidate": c, "round": int(r), "metric": k, "value": float(v)})
    except ValueError:
        pass
notes = [l.strip() for l in open(os.path.join(out, "notes.txt")) if l.strip()]

vals = {}
for x in raw:
    vals.setdefault((x["workload"], x["candidate"], x["metric"]), []).append(x["value"])
def med(wl, c, k):
    v = vals.get((wl, c, k))
    return statistics.median(v) if v else None
def first(wl, c, *keys):
    for k in keys:
        v = med(wl, c, k)
        if v is not None:
            return v
    return None

# socksbench's JSON (perf/socksbench.c --help), recorded with the prefix "sb.".
def sb(wl, c, what):
    k = {"rate": "sb.sessions_per_s", "mbps": "sb.mb_per_s", "errors": "sb.errors.total",
         "hs_p99": "sb.latency_us.handshake.p99", "ss_p99": "sb.latency_us.session.p99"}[what]
    v = med(wl, c, k)
    return v / 1000.0 if v is not None and "latency_us" in k else v

def per(a, b, scale=1.0):
    return a / b * scale if a is not None and b else None

# derived numbers, per candidate (medians over rounds of per-round ratios where both exist)
def per_round(wl, c, num, den, scale):
    out_ = []
    rounds = sorted({x["round"] for x in raw if x["workload"] == wl and x["candidate"] == c})
    for r in rounds:
        d = {x["metric"]: x["value"] for x in raw if x["workload"] == wl and x["candidate"] == c and x["round"] == r}
        n = d.get(num)
        dd = next((d[k] for k in den if k in d), None)
        if n is not None and dd:
            out_.append(n / dd * scale)
    return statistics.median(out_) if out_ else None

sess_keys = ["sb.sessions"]
byte_keys = ["sb.bytes_read"]
rows = []  # (section, label, {cand: value}, higher_is_better, fmt)
def row(section, label, f, hib, fmt="%.0f"):
    rows.append((section, label, {c: f(c) for c in cands}, hib, fmt))

row("session", "sessions/s", lambda c: sb("session", c, "rate"), True)
row("session", "handshake p99 (ms)", lambda c: sb("session", c, "hs_p99"), False, "%.2f")
row("session", "session p99 (ms)", lambda c: sb("session", c, "ss_p99"), False, "%.2f")
row("session", "errors (sum)", lambda c: sum(vals[("session", c, "sb.errors.total")]) if ("session", c, "sb.errors.total") in vals else None, False)
row("session", "CPU s / 10k sessions", lambda c: None if c == "direct" else per_round("session", c, "proxy_cpu_s", sess_keys, 1e4), False, "%.2f")
row("wrk", "keep-alive req/s (wrk via tunnel)", lambda c: med("wrk", c, "req_per_s"), True)
row("wrk", "wrk p99 (ms)", lambda c: med("wrk", c, "lat_p99_ms"), False, "%.2f")
row("wrk", "wrk errors (sum)", lambda c: sum(vals[("wrk", c, "errors")]) if ("wrk", c, "errors") in vals else None, False)
row("wrk", "CPU s / 1M requests", lambda c: None if c == "direct" else per_round("wrk", c, "proxy_cpu_s", ["requests"], 1e6), False, "%.1f")
row("wrk", "tunnel CPU (% of one core)", lambda c: None if c == "direct" or med("wrk", c, "tunnel_cpu_s") is None else 100.0 * med("wrk", c, "tunnel_cpu_s") / meta["duration_s"], False)
row("bulk", "bulk MB/s (%d clients)" % meta["bulk_clients"], lambda c: sb("bulk", c, "mbps"), True)
row("bulk", "bulk errors (sum)", lambda c: sum(vals[("bulk", c, "sb.errors.total")]) if ("bulk", c, "sb.errors.total") in vals else None, False)
row("bulk", "CPU s / GB relayed", lambda c: None if c == "direct" else per_round("bulk", c, "proxy_cpu_s", byte_keys, 1e9), False, "%.2f")
def udp_rtt_p99(c):
    v = med("udp", c, "sb.latency_us.rtt.p99")
    return v / 1000.0 if v is not None else None
row("udp", "udp datagrams/s (%s clients x window %s, %s B, %s s)" % (meta.get("udp_clients", "?"), meta.get("udp_window", "?"),
                                                                    meta.get("udp_size", "?"), meta.get("udp_duration_s", meta["duration_s"])),
    lambda c: med("udp", c, "sb.udp.datagrams_per_s"), True)
row("udp", "udp loss (%)", lambda c: med("udp", c, "sb.udp.loss_pct"), False, "%.3f")
row("udp", "udp RTT p99 (ms)", udp_rtt_p99, False, "%.2f")
row("udp", "CPU s / 1M datagrams (each echoed)", lambda c: None if c == "direct" else per_round("udp", c, "proxy_cpu_s", ["sb.udp.sent"], 1e6), False, "%.2f")
n_idle = meta["idle_connections"]
row("idle", "idle relays established (of %d)" % n_idle, lambda c: med("idle", c, "established"), True)
row("idle", "RSS with idle relays (MiB)", lambda c: per(med("idle", c, "rss_kib"), 1024), False, "%.1f")
row("idle", "PSS with idle relays (MiB)", lambda c: per(med("idle", c, "pss_kib"), 1024), False, "%.1f")
row("idle", "RSS growth per relay (KiB)",
    lambda c: (med("idle", c, "rss_kib") - med("idle", c, "rss_idle_kib")) / med("idle", c, "established")
    if med("idle", c, "rss_kib") is not None and med("idle", c, "established") else None, False, "%.2f")
def kern_extra(c):
    a, d = med("idle", c, "kern_slab_kib"), med("idle", "direct", "kern_slab_kib")
    t, td = med("idle", c, "kern_tcp_mem_kib"), med("idle", "direct", "kern_tcp_mem_kib")
    e = med("idle", c, "established")
    if c == "direct" or a is None or d is None or not e:
        return None
    return ((a - d) + ((t or 0) - (td or 0))) / 1024
row("idle", "kernel slab+TCP mem over direct (MiB)", kern_extra, False, "%.1f")
row("idle", "pipes held (at rest / with idle relays)",
    lambda c: None if med("idle", c, "pipes") is None else (med("idle", c, "pipes_idle"), med("idle", c, "pipes")), False)
row("idle", "processes / threads",
    lambda c: None if med("idle", c, "processes") is None else (med("idle", c, "processes"), med("idle", c, "threads")), False)
row("idle", "proxy CPU s to establish", lambda c: med("idle", c, "establish_cpu_s"), False, "%.2f")

def fmtv(v, fmt):
    if v is None:
        return "–"
    if isinstance(v, tuple):
        return "%d / %d" % v
    return fmt % v
others = ["direct"] + [p for p in proxies if p != subj]
head = ["metric"] + cands + ["%s/%s" % (subj, o) for o in others if o in cands and subj in cands]
lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
ratios = {}
for section, label, v, hib, fmt in rows:
    if all(x is None for x in v.values()):
        continue
    cells = [label] + [fmtv(v[c], fmt) for c in cands]
    for o in others:
        if subj not in cands or o not in cands:
            continue
        a, b = v.get(subj), v.get(o)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
            cells.append("%.2f" % (a / b))
            ratios.setdefault(label, {})["%s/%s" % (subj, o)] = a / b
        else:
            cells.append("–")
    lines.append("| " + " | ".join(cells) + " |")
title = "ringsocks %s (built %s) comparison, %s, %d round(s) x %ds%s; medians over rounds" % (
    meta.get("commit", "?"), meta.get("ringsocks_built", "?")[:16], meta["date"][:16], meta["rounds"], meta["duration_s"],
    ", --quick (%d idle connections, not 8000)" % n_idle if meta["quick"] else "")
md = ["## " + title, "", *lines, "",
      "Higher is better for rates and MB/s and established relays, lower for latency, CPU and memory. "
      "Ratios are %s divided by the column's candidate. CPU is the proxy's own (all processes and threads); "
      "wrk goes through a `ringsocks tunnel` in front of each proxy (direct: straight to nginx). "
      "Kernel memory is netns/system-wide and noisy: the slab and TCP deltas minus those of the same "
      "connections held direct." % subj, ""]
# Paired ratios: the subject against each other candidate round by round (the rounds are
# interleaved, so the two were measured within minutes of each other), then the median of those.
# The ratio column above divides two medians taken separately, which can come from different
# rounds: when the machine drifts during a run (a peer's rate falling by a third from the first
# round to the last, say) the two disagree, and the paired one is the comparison the interleaving
# was made for. Both are reported.
def round_vals(wl, c, num, den=None, scale=1.0):
    out_ = {}
    for r in sorted({x["round"] for x in raw if x["workload"] == wl and x["candidate"] == c}):
        d = {x["metric"]: x["value"] for x in raw if x["workload"] == wl and x["candidate"] == c and x["round"] == r}
        n = d.get(num)
        if n is None:
            continue
        if den is None:
            out_[r] = n
        elif d.get(den):
            out_[r] = n / d[den] * scale
    return out_
paired_defs = [
    ("sessions/s", lambda c: round_vals("session", c, "sb.sessions_per_s"), True),
    ("CPU s / 10k sessions", lambda c: round_vals("session", c, "proxy_cpu_s", "sb.sessions", 1e4), False),
    ("keep-alive req/s (wrk via tunnel)", lambda c: round_vals("wrk", c, "req_per_s"), True),
    ("CPU s / 1M requests", lambda c: round_vals("wrk", c, "proxy_cpu_s", "requests", 1e6), False),
    ("bulk MB/s", lambda c: round_vals("bulk", c, "sb.mb_per_s"), True),
    ("CPU s / GB relayed", lambda c: round_vals("bulk", c, "proxy_cpu_s", "sb.bytes_read", 1e9), False),
    ("udp datagrams/s", lambda c: round_vals("udp", c, "sb.udp.datagrams_per_s"), True),
]
paired = {}
plines = []
if subj in cands:
    for label, f, _hib in paired_defs:
        a = f(subj)
        cells, any_ = [label], False
        for o in others:
            if o not in cands or (o == "direct" and label.startswith("CPU")):
                cells.append("–")
                continue
            b = f(o)
            rs = [a[r] / b[r] for r in sorted(a) if r in b and b[r]]
            if not rs:
                cells.append("–")
                continue
            any_ = True
            m = statistics.median(rs)
            paired.setdefault(label, {})["%s/%s" % (subj, o)] = {"median": m, "rounds": rs}
            cells.append("%.2f (%s)" % (m, ", ".join("%.2f" % x for x in rs)) if len(rs) > 1 else "%.2f" % m)
        if any_:
            plines.append("| " + " | ".join(cells) + " |")
if plines:
    phead = ["paired, round by round"] + ["%s/%s" % (subj, o) for o in others]
    md += ["Paired ratios: %s against each candidate in the same round, the median over rounds "
           "(each round's ratio in brackets). The ratio columns above divide two medians taken "
           "separately, which may come from different rounds." % subj, "",
           "| " + " | ".join(phead) + " |", "|" + "---|" * len(phead)] + plines + [""]
if notes:
    md += ["Notes:", ""] + ["- " + n for n in notes] + [""]
md.append("Run took %d s. Raw numbers: results.json; chart: chart.png; logs: logs/." % meta["elapsed_s"])
text = "\n".join(md) + "\n"
open(os.path.join(out, "table.md"), "w").write(text)
print(text)

summary = {}
for (wl, c, k), v in vals.items():
    summary.setdefault(wl, {}).setdefault(c, {})[k] = {
        "median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}
table_json = {label: {c: (list(v[c]) if isinstance(v[c], tuple) else v[c]) for c in cands}
              for _, label, v, _, _ in rows}
json.dump({"meta": meta, "notes": notes, "table": table_json, "ratios": ratios, "paired_ratios": paired,
           "summary": summary, "raw": raw}, open(os.path.join(out, "results.json"), "w"), indent=1)

# chart: absolute values per candidate, one panel per workload, the ratio to direct on top of each
# bar (memory: the value, on a log scale).
colors = {"direct": "#999999", "ringsocks": "#cc3311", "dante": "#0077bb", "microsocks": "#009988", "hev": "#ee7733"}
panels = [("sessions/s", lambda c: sb("session", c, "rate"), False),
          ("keep-alive req/s (wrk via tunnel)", lambda c: med("wrk", c, "req_per_s"), False),
          ("bulk MB/s", lambda c: sb("bulk", c, "mbps"), False),
          ("udp datagrams/s", lambda c: med("udp", c, "sb.udp.datagrams_per_s"), False),
          ("proxy RSS MiB, %d idle relays (log)" % n_idle, lambda c: per(med("idle", c, "rss_kib"), 1024), True)]
panels = [p for p in panels if any(p[1](c) is not None for c in cands)]
if panels:
    gp = ["set terminal pngcairo size %d,480 font 'sans,10'" % (360 * len(panels)),
          "set output '%s'" % os.path.join(out, "chart.png"),
          "set multiplot layout 1,%d title '%s'" % (len(panels), title.replace("'", "")),
          "set style fill solid 0.85 border -1", "set boxwidth 0.7", "set grid ytics",
          "unset key", "set xtics nomirror rotate by -20", "set xrange [-0.6:%g]" % (len(cands) - 0.4)]
    for i, (t, f, is_mem) in enumerate(panels):
        dat = os.path.join(out, "chart-%d.dat" % i)
        d0 = f("direct")
        with open(dat, "w") as fh:
            for j, c in enumerate(cands):
                v = f(c)
                if is_mem:
                    lab = "%.1f" % v if v is not None else ""
                else:
                    lab = ("%.2fx direct" % (v / d0)) if v is not None and d0 and c != "direct" else ""
                col = int(colors.get(c, "#444444")[1:], 16)
                fh.write('%d "%s" %s "%s" %d\n' % (j, c, "%g" % v if v is not None else "NaN", lab, col))
        gp += ["set title '%s'" % t,
               "set logscale y" if is_mem else "unset logscale y",
               "set yrange [1:*]" if is_mem else "set yrange [0:*]",
               "plot '%s' using 1:3:5:xtic(2) with boxes lc rgb variable, "
               "'' using 1:3:4 with labels offset 0,0.7 font 'sans,8'" % dat]
    gp.append("unset multiplot")
    gpf = os.path.join(out, "chart.gp")
    open(gpf, "w").write("\n".join(gp) + "\n")
    r = subprocess.run(["gnuplot", gpf], capture_output=True, text=True)
    if r.returncode != 0:
        print("gnuplot failed: " + r.stderr.strip()[:500], file=sys.stderr)
PY
}

if [ -n "$REPORT_ONLY" ]; then
  [ -s "$REPORT_ONLY/raw.tsv" ] && [ -s "$REPORT_ONLY/meta.json" ] || { echo "compare.sh: no raw.tsv/meta.json in $REPORT_ONLY" >&2; exit 1; }
  touch "$REPORT_ONLY/notes.txt"
  report "$REPORT_ONLY"
  exit 0
fi

if [ -z "$OUT" ]; then OUT=$ROOT/perf/results/$(date +%Y%m%d-%H%M%S); fi
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
RAW=$OUT/raw.tsv
: >"$RAW"
NOTES=$OUT/notes.txt
: >"$NOTES"

# ------------------------------------------------------------------ processes and cleanup
WORK=$(mktemp -d /tmp/ringsocks-compare.XXXXXX)
chmod 755 "$WORK"                 # nginx workers (nobody when root) read the files
STARTED=()                        # pids of everything started in the background
CHILD=                            # the measurement running right now
cleanup() {
  local rc=$? pids=() p i
  trap - EXIT INT TERM
  # Only this script's own descendants are signalled (a pid of ours that ended may since belong to
  # someone else): SIGTERM to the daemons it started and to its whole tree, then, after two
  # seconds at most, SIGKILL to whatever of its tree is left.
  [ -n "$CHILD" ] && our_kill TERM "$CHILD"
  our_kill TERM "${STARTED[@]}"
  mapfile -t pids < <(python3 -c "$PROC_PY" desc $$)
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for i in 1 2 3 4 5 6 7 8; do
    sleep 0.2
    mapfile -t pids < <(python3 -c "$PROC_PY" desc $$)
    [ ${#pids[@]} -gt 0 ] || break
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
  exit $rc
}
# our_kill SIG PID...: signals those of the PIDs that are still children of this script.
our_kill() {
  local sig=$1 p
  shift
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    [ "$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | cut -d' ' -f2)" = "$$" ] || continue
    kill -"$sig" "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'trap "" INT TERM; say "interrupted"; exit 130' INT
trap 'trap "" INT TERM; say "terminated"; exit 143' TERM

# Process accounting, in python: /proc entries come and go while we read (Dante forks and reaps
# children, other programs run), and a vanished one must be skipped, not abort the sum.
#   tree PID.. the PIDs and all their descendants, one a line
#   desc PID   its descendants, less the branch of the python asking
#   cpu PID    CPU seconds of the tree: utime+stime of every live process (all its threads) plus
#              cutime+cstime (children it has already reaped), over CLK_TCK
#   mem PID    "rss_kib pss_kib procs threads fds pipes sockets" over the tree
PROC_PY='
import os, sys
def stats():
    d = {}
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            s = open("/proc/%s/stat" % e).read()
        except OSError:
            continue
        f = s[s.rindex(")") + 2:].split()
        d[int(e)] = (int(f[1]), sum(int(x) for x in f[11:15]))
    return d
def tree(root, d):
    if root not in d:
        return []
    kids = {}
    for pid, (ppid, _) in d.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return sorted(out)
def mem(pids):
    rss = pss = procs = thr = fds = pipes = socks = 0
    for pid in pids:
        try:
            for line in open("/proc/%d/status" % pid):
                if line.startswith("VmRSS:"): rss += int(line.split()[1])
                elif line.startswith("Threads:"): thr += int(line.split()[1])
            procs += 1
            for line in open("/proc/%d/smaps_rollup" % pid):
                if line.startswith("Pss:"): pss += int(line.split()[1])
            for fd in os.listdir("/proc/%d/fd" % pid):
                try:
                    t = os.readlink("/proc/%d/fd/%s" % (pid, fd))
                except OSError:
                    continue
                fds += 1
                pipes += t.startswith("pipe:")
                socks += t.startswith("socket:")
        except OSError:
            pass
    return "%d %d %d %d %d %d %d" % (rss, pss, procs, thr, fds, pipes, socks)
cmd, roots = sys.argv[1], [int(x) for x in sys.argv[2:]]
d = stats()
pids = sorted({p for r in roots for p in tree(r, d)})
if cmd == "tree":
    for x in pids:
        print(x)
elif cmd == "desc":  # descendants of the root, less the branch this very process runs in
    mine, p = set(), os.getpid()
    while p in d and p not in roots:
        mine.update(tree(p, d))
        p = d[p][0]
    for x in pids:
        if x not in roots and x not in mine:
            print(x)
elif cmd == "cpu":
    print("%.3f" % (sum(d[p][1] for p in pids) / os.sysconf("SC_CLK_TCK")))
else:
    print(mem(pids))
'
proc_tree() { python3 -c "$PROC_PY" tree "$@"; }
cpu_of() { python3 -c "$PROC_PY" cpu "$1"; }
mem_of() { python3 -c "$PROC_PY" mem "$1"; }
HZ=$(getconf CLK_TCK)

# kern: "tcp_mem_pages tcp_inuse slab_kib" (netns-wide sockstat, system-wide slab).
kern() {
  local s m
  s=$(awk '$1 == "TCP:" { for (i = 2; i < NF; i += 2) v[$i] = $(i + 1); print v["mem"] + 0, v["inuse"] + 0 }' /proc/net/sockstat)
  m=$(awk '$1 == "Slab:" { print $2 }' /proc/meminfo)
  echo "$s ${m:-0}"
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
# nap S: sleep that a signal to this script interrupts at once.
nap() { sleep "$1" & wait $! || true; }

# Descriptors this script inherited beyond stdio (a caller's pipes, say): the daemons started here
# get none of them, so that their descriptor and pipe counts are their own.
INHERITED_FDS=()
for f in /proc/$$/fd/*; do
  n=${f##*/}
  [ "$n" -gt 2 ] && [ "$n" -ne 255 ] && [ -e "$f" ] && INHERITED_FDS+=("$n")
done
# clean_exec CMD...: exec CMD without the inherited descriptors (use in a background subshell).
clean_exec() {
  local fd
  for fd in "${INHERITED_FDS[@]}"; do eval "exec $fd>&-" 2>/dev/null || true; done
  exec "$@"
}

# run_bounded SECS LOGFILE CMD...: runs CMD in the background under timeout(1) and waits, so that
# a signal to this script is handled at once (the trap kills CHILD). Returns CMD's status.
run_bounded() {
  local secs=$1 log=$2 rc=0
  shift 2
  timeout -k 3 "$secs" "$@" >"$log" 2>&1 &
  CHILD=$!
  wait "$CHILD" || rc=$?
  CHILD=
  return $rc
}

port_busy() { (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null; }
# free_port: sets FREE_PORT to a port nobody listens on, never one handed out before (ringsocks
# listens with SO_REUSEPORT, so a clash would not fail). 6000-10199: below the ephemeral range,
# also below the 10240 that scripts/tune.sh recommends.
NEXT_PORT=$((6000 + RANDOM % 3000))
free_port() {
  local p
  while :; do
    p=$NEXT_PORT; NEXT_PORT=$((NEXT_PORT + 1))
    [ "$NEXT_PORT" -lt 10200 ] || NEXT_PORT=6000
    if ! port_busy "$p" && ! ss -Hltn "( sport = :$p )" 2>/dev/null | grep -q .; then FREE_PORT=$p; return; fi
  done
}
# wait_port PORT PID NAME: until something listens on 127.0.0.1:PORT (10 s at most).
wait_port() {
  local i
  for i in $(seq 1 100); do
    if ss -Hltn "( sport = :$1 )" 2>/dev/null | grep -q .; then return 0; fi
    alive "$2" || { say "$3 exited at start (see $OUT/logs/$3.log)"; return 1; }
    sleep 0.1
  done
  say "$3 is not listening on port $1 after 10 s"
  return 1
}

# ------------------------------------------------------------------ dependencies and build
SUDO=()
[ "$(id -u)" -eq 0 ] || SUDO=(sudo)
need_pkgs=()
for pair in nginx:nginx-light wrk:wrk danted:dante-server microsocks:microsocks gnuplot:gnuplot-nox python3:python3 gcc:build-essential ss:iproute2; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] || need_pkgs+=("${pair#*:}")
done
if [ "$BUILD" = 1 ] && [ -f "$ROOT/scripts/setup.sh" ]; then
  bash "$ROOT/scripts/setup.sh" || say "scripts/setup.sh failed; continuing with what is installed"
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  say "installing ${need_pkgs[*]}"
  if [ ${#SUDO[@]} -gt 0 ] && ! command -v sudo >/dev/null; then
    echo "compare.sh: need root or sudo to install ${need_pkgs[*]}" >&2; exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
export PATH=$PATH:/usr/sbin:/sbin
for c in nginx wrk danted microsocks gnuplot python3; do
  command -v "$c" >/dev/null || say "missing after install: $c"
done

BUILD_DIR=$ROOT/build
if [ "$BUILD" = 1 ]; then
  if d=$(cd "$ROOT" && bash scripts/build.sh release 2>"$OUT/logs/build.log"); then
    BUILD_DIR=$ROOT/$d
  elif [ -x "$BUILD_DIR/ringsocks" ]; then
    note "the release build failed (logs/build.log); measuring the ringsocks binary already in $BUILD_DIR"
  else
    cat "$OUT/logs/build.log" >&2; echo "compare.sh: build failed" >&2; exit 1
  fi
fi
RINGSOCKS=$BUILD_DIR/ringsocks
[ -x "$RINGSOCKS" ] || { echo "compare.sh: no $RINGSOCKS (run scripts/build.sh release)" >&2; exit 1; }
# Run a private copy, so that a rebuild during the run (someone else's) changes nothing here.
RS_BUILT=$(date -Is -r "$RINGSOCKS")
cp "$RINGSOCKS" "$WORK/ringsocks"
RINGSOCKS=$WORK/ringsocks
RS_SHA=$(sha256sum "$RINGSOCKS" | cut -c1-12)

SOCKSBENCH=
if [ -x "$BUILD_DIR/perf/socksbench" ]; then
  cp "$BUILD_DIR/perf/socksbench" "$WORK/socksbench"
  SOCKSBENCH=$WORK/socksbench
elif [ -f "$ROOT/perf/socksbench.c" ]; then
  # Not built by CMake (yet): compile by hand, with the codec if it uses it.
  extra=()
  grep -q 'ringsocks/socks5.h' "$ROOT/perf/socksbench.c" && extra=(-I"$ROOT/include" "$ROOT/src/socks5.c")
  if gcc -O2 -pthread -D_GNU_SOURCE -o "$WORK/socksbench" "$ROOT/perf/socksbench.c" "${extra[@]}" -lm \
       2>"$OUT/logs/socksbench-build.log"; then
    SOCKSBENCH=$WORK/socksbench
  else
    note "perf/socksbench.c did not compile (logs/socksbench-build.log)"
  fi
fi
if [ -z "$SOCKSBENCH" ]; then
  note "no socksbench: the session and bulk workloads are skipped"
fi

# ------------------------------------------------------------------ servers
# Every daemon started here gets the full descriptor limit (a login shell's soft limit is often
# 1024, which would cap microsocks at ~500 relays while ringsocks raises its own).
ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || note "could not raise the soft RLIMIT_NOFILE ($(ulimit -Sn)) to the hard one ($(ulimit -Hn))"
say "out: $OUT; rounds $ROUNDS, ${DURATION}s a measurement, $IDLE_N idle connections$([ "$QUICK" = 1 ] && echo ' (--quick)')"
mkdir -p "$WORK/www" "$WORK/nginx"
head -c "$SMALL_B" /dev/zero | tr '\0' 'x' >"$WORK/www/small"
head -c $((LARGE_MIB << 20)) /dev/zero >"$WORK/www/large"
chmod -R a+rX "$WORK/www"
free_port; NGINX_PORT=$FREE_PORT
cat >"$WORK/nginx/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile 20000;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 10000; multi_accept on; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_timeout 300s;
  keepalive_requests 10000000;
  client_header_timeout 300s;
  default_type application/octet-stream;
  client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx; fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
  server { listen 127.0.0.1:$NGINX_PORT backlog=4096; root $WORK/www; }
}
CONF
nginx -c "$WORK/nginx/nginx.conf" -g 'daemon off;' >"$OUT/logs/nginx.log" 2>&1 &
NGINX_PID=$!; STARTED+=("$NGINX_PID")
wait_port "$NGINX_PORT" "$NGINX_PID" nginx || exit 1

free_port; SINK_PORT=$FREE_PORT
python3 "$ROOT/perf/idlehold.py" serve --listen 127.0.0.1:"$SINK_PORT" --ready "$WORK/sink.ready" \
  >"$OUT/logs/idlesink.log" 2>&1 &
SINK_PID=$!; STARTED+=("$SINK_PID")
wait_port "$SINK_PORT" "$SINK_PID" idlesink || exit 1

# The UDP echo server (socksbench --udp-echo, port 0: it says which on its first line).
UDP_ECHO_PORT=
if [ -n "$SOCKSBENCH" ] && [[ ",$WORKLOADS," == *,udp,* ]]; then
  (clean_exec "$SOCKSBENCH" --udp-echo 127.0.0.1:0 -t "$UDP_ECHO_T" >"$OUT/logs/udp-echo.log" 2>&1) &
  UDP_ECHO_PID=$!; STARTED+=("$UDP_ECHO_PID")
  for i in $(seq 1 50); do
    UDP_ECHO_PORT=$(sed -n 's/^socksbench: udp echo on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$OUT/logs/udp-echo.log")
    [ -z "$UDP_ECHO_PORT" ] || break
    alive "$UDP_ECHO_PID" || break
    sleep 0.1
  done
  [ -n "$UDP_ECHO_PORT" ] || note "the UDP echo server did not start (logs/udp-echo.log); udp skipped"
fi

declare -A PPORT PPID_ TPORT TPID DEAD RESTARTS
start_ringsocks() {
  (clean_exec "$RINGSOCKS" -l 127.0.0.1:"$1" -w "$RS_WORKERS" "${@:2}" >>"$OUT/logs/ringsocks.log" 2>&1) &
  STARTED_PID=$!
}
start_dante() {
  local conf=$WORK/danted.conf
  mkdir -p "$WORK/dante-tmp"; chmod 1777 "$WORK/dante-tmp"
  {
    echo "logoutput: $OUT/logs/dante-server.log"
    echo "errorlog: $OUT/logs/dante-server.log"
    echo "internal: 127.0.0.1 port = $1"
    echo "external: 127.0.0.1"
    echo "clientmethod: none"
    echo "socksmethod: none"
    if [ "$(id -u)" -eq 0 ]; then echo "user.privileged: root"; echo "user.unprivileged: nobody"; fi
    echo "timeout.negotiate: 30"
    echo "timeout.io: 0"
    echo "client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }"
    echo "socks pass { from: 127.0.0.0/8 to: 127.0.0.0/8 command: connect }"
    echo "socks pass { from: 127.0.0.0/8 to: 0.0.0.0/0 command: udpassociate }"
    echo "socks pass { from: 0.0.0.0/0 to: 127.0.0.0/8 command: udpreply }"
  } >"$conf"
  (export TMPDIR=$WORK/dante-tmp; clean_exec danted -f "$conf" -N "$DANTE_MOTHERS" -p "$WORK/danted.pid" >>"$OUT/logs/dante.log" 2>&1) &
  STARTED_PID=$!
}
start_microsocks() {
  # microsocks 1.0.3 logs every connection and has no switch to stop it: to /dev/null.
  (clean_exec microsocks -i 127.0.0.1 -p "$1" >/dev/null 2>&1) &
  STARTED_PID=$!
}
start_hev() {
  local conf=$WORK/hev.yml
  printf 'main:\n  workers: %s\n  port: %s\n  listen-address: 127.0.0.1\nmisc:\n  log-level: error\n  limit-nofile: %s\n' \
    "$RS_WORKERS" "$1" "$(ulimit -Hn)" >"$conf"
  (clean_exec "$HEV_SOCKS5_SERVER" "$conf" >>"$OUT/logs/hev.log" 2>&1) &
  STARTED_PID=$!
}
# up CAND: starts the proxy and its wrk tunnel (a ringsocks tunnel in front of the proxy, the
# same for every proxy) on the candidate's ports.
up() {
  local p=$1
  case "$p" in
    ringsocks-w1) start_ringsocks "${PPORT[$p]}" -w 1 --cpus 0 ;;
    ringsocks-w1u) start_ringsocks "${PPORT[$p]}" -w 1 ;;
    ringsocks-w2pin) start_ringsocks "${PPORT[$p]}" -w 2 --cpus 0,1 ;;
    ringsocks-reno) start_ringsocks "${PPORT[$p]}" --congestion reno ;;
    ringsocks-system) start_ringsocks "${PPORT[$p]}" --congestion system ;;
    ringsocks-*) start_ringsocks "${PPORT[$p]}" --relay "${p#ringsocks-}" ;;
    *) start_"$p" "${PPORT[$p]}" ;;
  esac
  PPID_[$p]=$STARTED_PID; STARTED+=("$STARTED_PID")
  wait_port "${PPORT[$p]}" "${PPID_[$p]}" "$p" || return 1
  "$RINGSOCKS" tunnel -L "${TPORT[$p]}:127.0.0.1:$NGINX_PORT" --via "socks5://127.0.0.1:${PPORT[$p]}" \
    -w "$TUNNEL_WORKERS" >>"$OUT/logs/tunnel-$p.log" 2>&1 &
  TPID[$p]=$!; STARTED+=("${TPID[$p]}")
  wait_port "${TPORT[$p]}" "${TPID[$p]}" "tunnel-$p" || return 1
}
for p in "${PROXIES[@]}"; do
  free_port; PPORT[$p]=$FREE_PORT; free_port; TPORT[$p]=$FREE_PORT; RESTARTS[$p]=0
  up "$p" || exit 1
done
# Sanity: one GET through every proxy before measuring anything.
for p in "${PROXIES[@]}"; do
  if ! out=$(timeout 5 curl -s --max-time 4 --socks5 127.0.0.1:"${PPORT[$p]}" http://127.0.0.1:"$NGINX_PORT"/small) \
     || [ "${#out}" -ne "$SMALL_B" ]; then
    note "$p failed a plain GET through it before the run"
  fi
done
say "nginx :$NGINX_PORT, idle sink :$SINK_PORT, $(for p in "${PROXIES[@]}"; do printf '%s :%s (tunnel :%s) ' "$p" "${PPORT[$p]}" "${TPORT[$p]}"; done)"

# ------------------------------------------------------------------ measurement helpers
# check_alive CAND: the proxy and its tunnel still run, and the proxy answers a SOCKS5 greeting
# within 3 s. One found dead (a crash, or something else on the machine killed it) or wedged (a
# proxy that ran out of descriptors in the idle workload may never recover: hev-socks5-server did
# not) is noted with the end of its log and restarted, twice at most; after that it is skipped.
log_tail() { [ -s "$1" ] && tail -n 2 "$1" | tr '\n' ' ' | cut -c1-200 || echo "no log"; }
answers_greeting() {
  python3 - "$1" <<'PY' 2>/dev/null
import socket, sys
try:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=3)
    s.sendall(b"\x05\x01\x00")
    sys.exit(0 if s.recv(2) == b"\x05\x00" else 1)
except OSError:
    sys.exit(1)
PY
}
check_alive() {
  local c=$1 what='' i
  [ "$c" = direct ] && return 0
  [ -z "${DEAD[$c]:-}" ] || return 1
  alive "${PPID_[$c]}" || what="$c (pid ${PPID_[$c]}; log: $(log_tail "$OUT/logs/$c.log"))"
  alive "${TPID[$c]}" || what="${what:+$what and }the tunnel in front of $c (pid ${TPID[$c]}; log: $(log_tail "$OUT/logs/tunnel-$c.log"))"
  if [ -z "$what" ] && ! answers_greeting "${PPORT[$c]}"; then
    what="$c (pid ${PPID_[$c]}: running, but no answer to a SOCKS5 greeting within 3 s; log: $(log_tail "$OUT/logs/$c.log"))"
  fi
  [ -n "$what" ] || return 0
  our_kill TERM "${PPID_[$c]}" "${TPID[$c]}"
  for i in $(seq 1 30); do alive "${PPID_[$c]}" || alive "${TPID[$c]}" || break; sleep 0.1; done
  our_kill KILL "${PPID_[$c]}" "${TPID[$c]}"
  sleep 0.5
  if [ "${RESTARTS[$c]}" -lt 2 ] && up "$c"; then
    RESTARTS[$c]=$((RESTARTS[$c] + 1))
    note "found dead or wedged, and restarted: $what"
    return 0
  fi
  DEAD[$c]=1
  note "found dead or wedged, not restarted; its later measurements are skipped: $what"
  return 1
}
# order_for ROUND: the candidates rotated by the round number, so that no one always goes first.
order_for() {
  local r=$1 n=${#CANDS[@]} i
  for ((i = 0; i < n; i++)); do echo "${CANDS[$(((i + r - 1) % n))]}"; done
}
SB_PARSE='
import json, sys
d = json.load(open(sys.argv[1]))
def flat(o, pre=""):
    if isinstance(o, dict):
        for k, v in o.items():
            yield from flat(v, pre + k + ".")
    elif isinstance(o, (int, float)) and not isinstance(o, bool):
        yield pre[:-1], o
for k, v in flat(d):
    print(k.replace("\t", " "), v)
'
WRK_PARSE='
import re, sys
t = open(sys.argv[1]).read()
unit = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}
m = re.search(r"Requests/sec:\s*([\d.]+)", t)
if m: print("req_per_s", m.group(1))
m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", t)
if m: print("requests", m.group(1))
err = 0
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
if m: err += sum(int(x) for x in m.groups())
m = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
if m: err += int(m.group(1))
print("errors", err)
for p, v, u in re.findall(r"^\s+(50|75|90|99)(?:\.\d+)?%\s+([\d.]+)(us|ms|s|m)\s*$", t, re.M):
    print("lat_p%s_ms" % p, "%.4f" % (float(v) * unit[u]))
'

# measure WORKLOAD CAND ROUND LOG CMD...: runs CMD bounded, with the proxy's CPU before/after.
# Leaves the CPU seconds in MEASURED_CPU and the status in MEASURED_RC.
measure() {
  local wl=$1 c=$2 r=$3 log=$4 c0=0 c1=0
  shift 4
  MEASURED_RC=0
  [ "$c" = direct ] || c0=$(cpu_of "${PPID_[$c]}")
  run_bounded $((DURATION + 30)) "$log" "$@" || MEASURED_RC=$?
  [ "$c" = direct ] || c1=$(cpu_of "${PPID_[$c]}")
  MEASURED_CPU=$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.3f", b - a }')
  MEASURED_OK=1
  if [ "$c" != direct ] && { ! alive "${PPID_[$c]}" || ! alive "${TPID[$c]}"; }; then
    MEASURED_OK=0
    note "$wl/$c round $r: the proxy or its tunnel stopped during the measurement; its numbers are dropped"
    return 0
  fi
  [ "$c" = direct ] || record "$wl" "$c" "$r" proxy_cpu_s "$MEASURED_CPU"
  [ "$MEASURED_RC" = 0 ] || { record "$wl" "$c" "$r" exit_status "$MEASURED_RC"; note "$wl/$c round $r: exit status $MEASURED_RC (logs/$(basename "$log"))"; }
}

sb_args() { # CAND: how socksbench reaches the target
  if [ "$1" = direct ]; then echo --direct; else echo --proxy 127.0.0.1:"${PPORT[$1]}"; fi
}

# ------------------------------------------------------------------ workloads
# A workload is a function wl_NAME CAND ROUND that measures one candidate once and calls
# `record NAME CAND ROUND METRIC VALUE` for each number; wl_NAME_once=1 runs it in round 1 only.
# Add one by defining the function and naming it in --workloads.

wl_session() {
  local c=$1 r=$2 j=$OUT/logs/session-$1-$2.json
  [ -n "$SOCKSBENCH" ] || return 0
  # shellcheck disable=SC2046
  measure session "$c" "$r" "$OUT/logs/session-$c-$r.log" "$SOCKSBENCH" --mode session $(sb_args "$c") \
    --target 127.0.0.1:"$NGINX_PORT" -c "$SESSION_C" -t "$SESSION_T" -d "$DURATION" \
    --request "$SB_REQ_SMALL" --timeout 5 --json "$j"
  if [ "$MEASURED_OK" = 1 ]; then sb_record session "$c" "$r" "$j"; fi
}

wl_bulk() {
  local c=$1 r=$2 j=$OUT/logs/bulk-$1-$2.json
  [ -n "$SOCKSBENCH" ] || return 0
  # shellcheck disable=SC2046
  measure bulk "$c" "$r" "$OUT/logs/bulk-$c-$r.log" "$SOCKSBENCH" --mode bulk $(sb_args "$c") \
    --target 127.0.0.1:"$NGINX_PORT" -c "$BULK_C" -t "$BULK_T" -d "$DURATION" \
    --request "$SB_REQ_LARGE" --timeout 10 --json "$j"
  if [ "$MEASURED_OK" = 1 ]; then sb_record bulk "$c" "$r" "$j"; fi
}

wl_wrk() {
  local c=$1 r=$2 url
  if [ "$c" = direct ]; then url=http://127.0.0.1:$NGINX_PORT/small; else url=http://127.0.0.1:${TPORT[$c]}/small; fi
  local t0=0 t1=0
  [ "$c" = direct ] || t0=$(cpu_of "${TPID[$c]}")
  measure wrk "$c" "$r" "$OUT/logs/wrk-$c-$r.txt" wrk -t1 -c"$WRK_C" -d"${DURATION}s" --latency "$url"
  [ "$MEASURED_OK" = 1 ] || return 0
  if [ "$c" != direct ]; then   # the tunnel's CPU: is it the bottleneck? (the same for every proxy)
    t1=$(cpu_of "${TPID[$c]}")
    record wrk "$c" "$r" tunnel_cpu_s "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')"
  fi
  while read -r k v; do record wrk "$c" "$r" "$k" "$v"; done < <(python3 -c "$WRK_PARSE" "$OUT/logs/wrk-$c-$r.txt")
}

# shellcheck disable=SC2034  # read through ${!once_var}
wl_idle_once=1
wl_idle() {
  local c=$1 r=$2 st=$WORK/hold-$1.json m0 m1 k0 k1 c0=0 c1=0 i
  rm -f "$st"
  local target_args=(--direct)
  [ "$c" = direct ] || target_args=(--proxy 127.0.0.1:"${PPORT[$c]}")
  [ "$c" = direct ] || { m0=$(mem_of "${PPID_[$c]}"); c0=$(cpu_of "${PPID_[$c]}"); }
  k0=$(kern)
  local deadline=$((IDLE_N / 500 + 8))   # 2000: 12 s, 8000: 24 s, for all the handshakes
  python3 "$ROOT/perf/idlehold.py" hold --target 127.0.0.1:"$SINK_PORT" "${target_args[@]}" -n "$IDLE_N" \
    --parallel 128 --timeout 5 --deadline "$deadline" --hold $((deadline + IDLE_WAIT + 30)) --status "$st" \
    >"$OUT/logs/idle-$c.log" 2>&1 &
  local hp=$!
  STARTED+=("$hp")
  for i in $(seq 1 $((deadline * 10 + 50))); do
    [ -s "$st" ] && break
    alive "$hp" || break
    sleep 0.1
  done
  if [ ! -s "$st" ]; then
    note "idle/$c: the holder did not finish establishing (logs/idle-$c.log)"
    our_kill TERM "$hp"; wait "$hp" 2>/dev/null || true
    return 0
  fi
  c1=$([ "$c" = direct ] || cpu_of "${PPID_[$c]}")
  nap "$IDLE_WAIT"
  k1=$(kern)
  [ "$c" = direct ] || m1=$(mem_of "${PPID_[$c]}")
  our_kill TERM "$hp"
  for i in $(seq 1 150); do alive "$hp" || break; sleep 0.1; done
  our_kill KILL "$hp"
  wait "$hp" 2>/dev/null || true
  cp "$st" "$OUT/logs/idle-$c.json"
  while read -r k v; do
    case "$k" in
      requested|attempted|established|failed|establish_s|closed_by_peer_while_held) record idle "$c" "$r" "$k" "$v" ;;
      errors.*) record idle "$c" "$r" "hold_error:${k#errors.}" "$v" ;;
    esac
  done < <(python3 -c "$SB_PARSE" "$st")
  python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["errors"]; print(", ".join("%s %s" % kv for kv in e.items()))' "$st" \
    | { read -r e; [ -z "$e" ] || note "idle/$c: connection failures: $e"; }
  read -r km0 ki0 ks0 <<<"$k0"; read -r km1 ki1 ks1 <<<"$k1"
  record idle "$c" "$r" kern_tcp_mem_kib $(((km1 - km0) * 4))
  record idle "$c" "$r" kern_tcp_inuse_delta $((ki1 - ki0))
  record idle "$c" "$r" kern_slab_kib $((ks1 - ks0))
  if [ "$c" != direct ]; then
    record idle "$c" "$r" establish_cpu_s "$(awk -v a="$c0" -v b="$c1" 'BEGIN { printf "%.3f", b - a }')"
    read -r rss0 _ _ _ _ pi0 _ <<<"$m0"
    read -r rss1 pss1 pr1 th1 fd1 pi1 so1 <<<"$m1"
    record idle "$c" "$r" rss_idle_kib "$rss0"
    record idle "$c" "$r" rss_kib "$rss1"
    record idle "$c" "$r" pss_kib "$pss1"
    record idle "$c" "$r" processes "$pr1"
    record idle "$c" "$r" threads "$th1"
    record idle "$c" "$r" fds "$fd1"
    record idle "$c" "$r" pipes "$pi1"
    record idle "$c" "$r" sockets "$so1"
    record idle "$c" "$r" pipes_idle "$pi0"
  fi
  # let the proxy release everything before the next candidate
  sleep 0.5
}

# udp: each of UDP_C clients holds one UDP ASSOCIATE (direct: a plain UDP socket) and keeps
# UDP_WINDOW datagrams of UDP_SIZE bytes in flight to the echo server for UDP_D seconds;
# datagrams/s echoed, loss (sent - received after a 0.5 s drain; 1 s loss timeout), RTT p99.
wl_udp() {
  local c=$1 r=$2 j=$OUT/logs/udp-$1-$2.json
  [ -n "$SOCKSBENCH" ] && [ -n "$UDP_ECHO_PORT" ] || return 0
  if [ "$c" = microsocks ]; then
    [ "$r" != 1 ] || note "udp: microsocks has no UDP ASSOCIATE; not measured"
    return 0
  fi
  # shellcheck disable=SC2046
  measure udp "$c" "$r" "$OUT/logs/udp-$c-$r.log" "$SOCKSBENCH" --mode udp $(sb_args "$c") \
    --target 127.0.0.1:"$UDP_ECHO_PORT" -c "$UDP_C" -t "$UDP_T" -d "$UDP_D" --size "$UDP_SIZE" \
    --window "$UDP_WINDOW" --timeout 5 --json "$j"
  [ "$MEASURED_OK" = 1 ] || return 0
  sb_record udp "$c" "$r" "$j"
  [ -s "$j" ] || return 0
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); e=d["errors"]; u=d["udp"]
if e["total"] or u["bad"] or u["send_errors"]:
    print("%d association errors (connect %d, handshake %d, io %d, timeout %d), %d bad datagrams, %d send errors"
          % (e["total"], e["connect"], e["handshake"], e["io"], e["timeout"], u["bad"], u["send_errors"]))' "$j" \
    | { read -r e || true; [ -z "$e" ] || note "udp/$c round $r: $e"; }
}

sb_record() { # WORKLOAD CAND ROUND JSON: socksbench's numbers
  local wl=$1 c=$2 r=$3 j=$4
  if [ ! -s "$j" ]; then note "$wl/$c round $r: socksbench wrote no JSON (logs/$wl-$c-$r.log)"; return 0; fi
  while read -r k v; do record "$wl" "$c" "$r" "sb.$k" "$v"; done < <(python3 -c "$SB_PARSE" "$j")
}
SB_REQ_SMALL='GET /small HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n'
SB_REQ_LARGE='GET /large HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n'

# ------------------------------------------------------------------ run
for w in "${WL[@]}"; do
  declare -F "wl_$w" >/dev/null || { note "unknown workload '$w' skipped"; continue; }
  once_var=wl_${w}_once
  nr=$ROUNDS; [ "${!once_var:-0}" = 1 ] && nr=1
  for r in $(seq 1 "$nr"); do
    for c in $(order_for "$r"); do
      check_alive "$c" || continue
      say "$w: $c (round $r/$nr)"
      "wl_$w" "$c" "$r" || note "$w/$c round $r: the workload function failed (status $?)"
    done
  done
done

# ------------------------------------------------------------------ report
ELAPSED=$(($(date +%s) - START_TS))
cat >"$OUT/meta.json" <<JSON
{"quick": $QUICK, "rounds": $ROUNDS, "duration_s": $DURATION, "idle_connections": $IDLE_N,
 "idle_wait_s": $IDLE_WAIT, "session_clients": $SESSION_C, "session_threads": $SESSION_T,
 "wrk_connections": $WRK_C, "bulk_clients": $BULK_C, "bulk_threads": $BULK_T, "large_mib": $LARGE_MIB, "small_bytes": $SMALL_B,
 "udp_clients": $UDP_C, "udp_threads": $UDP_T, "udp_size": $UDP_SIZE, "udp_window": $UDP_WINDOW, "udp_echo_threads": $UDP_ECHO_T, "udp_duration_s": $UDP_D,
 "ringsocks_workers": $RS_WORKERS, "tunnel_workers": $TUNNEL_WORKERS, "dante_mothers": $DANTE_MOTHERS,
 "subject": "$SUBJECT", "candidates": "$(IFS=,; echo "${CANDS[*]}")", "workloads": "$WORKLOADS",
 "elapsed_s": $ELAPSED, "date": "$(date -Is)", "kernel": "$(uname -r)", "tcp_congestion_control": "$(cat /proc/sys/net/ipv4/tcp_congestion_control 2>/dev/null)", "cpus": $(nproc),
 "clk_tck": $HZ, "ringsocks": "$("$RINGSOCKS" --version 2>&1 | head -1)", "socksbench": "${SOCKSBENCH:+yes}",
 "dante": "$(danted -v 2>&1 | head -1 | cut -c1-40)", "hev": "${HEV_SOCKS5_SERVER:-}", "microsocks": "$(dpkg-query -W -f='${Version}' microsocks 2>/dev/null)",
 "nginx": "$(nginx -v 2>&1 | cut -d/ -f2)", "wrk": "$(wrk -v 2>&1 | head -1 | cut -d' ' -f2)",
 "nofile": "$(ulimit -Sn)/$(ulimit -Hn)", "ringsocks_binary": "$BUILD_DIR/ringsocks", "ringsocks_built": "$RS_BUILT", "ringsocks_sha256": "$RS_SHA", "commit": "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet HEAD -- src include 2>/dev/null || echo '+dirty')"}
JSON
report "$OUT"
say "done in $(($(date +%s) - START_TS)) s: $OUT/table.md, $OUT/results.json, $OUT/chart.png"
