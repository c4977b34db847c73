#!/usr/bin/env bash
# Shows the kernel settings and limits that matter for a proxy holding many connections, with the
# current value, the recommended one and whether it is OK; then how workers map to CPUs (and,
# for every running ringsocks, each thread and the CPUs it may run on).
#   scripts/tune.sh            print only
#   scripts/tune.sh --apply    also set the sysctls that are not OK (root, or sudo); runtime only,
#                              and prints the lines to keep them in /etc/sysctl.d/
# A read-only sysctl (a container) or one this kernel lacks is reported, never fatal.
set -uo pipefail

APPLY=0
case "${1:-}" in
  --apply) APPLY=1 ;;
  ""|--print) ;;
  # the comment block under the #! line, however many lines it has (a fixed range of lines
  # had come to include the set line)
  -h|--help) awk 'NR == 1 { next } !/^#/ { exit } { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
  *) echo "usage: scripts/tune.sh [--apply]" >&2; exit 2 ;;
esac

SUDO=()
if [ "$APPLY" = 1 ] && [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO=(sudo); else
    echo "tune.sh: --apply needs root or sudo; printing only" >&2; APPLY=0
  fi
fi

# name | recommended | test | why. Tests: min:N (value >= N), eq:N, range:N (hi-lo+1 >= N),
# minor0:N (0, meaning unlimited, or >= N).
CHECKS=(
  "net.core.somaxconn|4096|min:4096|accept backlog ceiling of a listen() call"
  "net.ipv4.tcp_max_syn_backlog|4096|min:4096|half-open connections queued per listener"
  "net.ipv4.ip_local_port_range|10240 65535|range:50000|source ports for outgoing connects to one destination (TIME_WAIT included)"
  "net.ipv4.tcp_tw_reuse|1|eq:1|reuse TIME_WAIT ports for outgoing connects (2 = loopback only)"
  "fs.file-max|2097152|min:1048576|descriptors system-wide"
  "fs.nr_open|1048576|min:1048576|ceiling of any process's RLIMIT_NOFILE"
  "fs.pipe-max-size|1048576|min:1048576|largest F_SETPIPE_SZ of an unprivileged process (ringsocks asks 1 MiB)"
  "fs.pipe-user-pages-soft|262144|min0:262144|pipe pages per non-root user before new pipes get one page (0 = no limit)"
  "fs.pipe-user-pages-hard|0|min0:262144|pipe pages per non-root user before pipe() fails (0 = no limit)"
  "net.core.rmem_max|16777216|min:4194304|largest SO_RCVBUF"
  "net.core.wmem_max|16777216|min:4194304|largest SO_SNDBUF"
)

ok_for() { # TEST VALUE -> 0 when OK
  local t=${1%%:*} n=${1#*:} v=$2
  case "$t" in
    min) [ "$v" -ge "$n" ] ;;
    min0) [ "$v" -eq 0 ] || [ "$v" -ge "$n" ] ;;
    eq) [ "$v" -eq "$n" ] ;;
    range) set -- $v; [ $(($2 - $1 + 1)) -ge "$n" ] ;;
  esac
}

printf '%-30s %-14s %-14s %-20s %s\n' sysctl current recommended status why
persist=()
for line in "${CHECKS[@]}"; do
  IFS='|' read -r name rec test why <<<"$line"
  f=/proc/sys/${name//./\/}
  if [ ! -e "$f" ]; then
    printf '%-30s %-14s %-14s %-20s %s\n' "$name" "-" "$rec" absent "$why"
    continue
  fi
  cur=$(tr -s '\t ' '  ' <"$f" 2>/dev/null)
  if ok_for "$test" "$cur" 2>/dev/null; then status=OK; else status=LOW; fi
  ro=
  if [ "$(id -u)" -ne 0 ]; then ro=" (root to set)"; elif [ ! -w "$f" ]; then ro=" (read-only here)"; fi
  if [ "$status" = LOW ] && [ "$APPLY" = 1 ]; then
    if [ ! -w "$f" ] && [ "$(id -u)" -eq 0 ]; then
      status="LOW, read-only"
    elif "${SUDO[@]}" sysctl -q -w "$name=$rec" >/dev/null 2>&1; then
      cur=$(tr -s '\t ' '  ' <"$f"); status=SET
      persist+=("$name = $rec")
    else
      status="LOW, not settable"
    fi
  elif [ "$status" = LOW ]; then
    status="LOW$ro"
  fi
  printf '%-30s %-14s %-14s %-20s %s\n' "$name" "$cur" "$rec" "$status" "$why"
done

# Descriptor limits of this shell (a process can raise its soft limit up to the hard one;
# ringsocks does; the hard one only root, up to fs.nr_open, and not in every container).
soft=$(ulimit -Sn); hard=$(ulimit -Hn)
status=OK
[ "$hard" = unlimited ] || [ "$hard" -ge 65536 ] || status=LOW
printf '%-30s %-14s %-14s %-20s %s\n' "RLIMIT_NOFILE (soft/hard)" "$soft/$hard" "65536/65536+" "$status" \
  "one process holds about (hard - 64) / 2 relays: $(( ${hard/unlimited/1048576} > 64 ? (${hard/unlimited/1048576} - 64) / 2 : 0 ))"
if [ "$soft" != "$hard" ]; then
  echo "  note: the soft limit is below the hard one; programs that do not raise it themselves (microsocks) stop at $soft descriptors: ulimit -n $hard"
fi
if [ "$status" = LOW ]; then
  echo "  note: raise the hard limit where the proxy is started: ulimit -Hn / LimitNOFILE= in a systemd unit / limits.conf (as root; impossible in some containers)"
fi
if [ ${#persist[@]} -gt 0 ]; then
  echo
  echo "Set for now. To keep them, put these lines in /etc/sysctl.d/90-ringsocks.conf:"
  printf '  %s\n' "${persist[@]}"
fi

# Congestion control: a choice for the network, not a limit, so only reported, never applied.
cc=$(cat /proc/sys/net/ipv4/tcp_congestion_control 2>/dev/null || echo '?')
echo
echo "TCP congestion control: $cc (available: $(cat /proc/sys/net/ipv4/tcp_available_congestion_control 2>/dev/null || echo '?'))"
if [ "$cc" = bbr ]; then
  echo "  note: bbr paces every socket, loopback included (an hrtimer per burst). ringsocks does not pace its"
  echo "  sockets to peers on this machine (cubic for those unless --congestion says otherwise); where its peers"
  echo "  are on a LAN, ringsocks --congestion cubic (or reno) takes pacing off all its own sockets."
fi

# Workers and CPUs.
echo
echo "CPUs: nproc $(nproc), online $(cat /sys/devices/system/cpu/online 2>/dev/null || echo '?'), this shell may run on $(taskset -pc $$ 2>/dev/null | sed 's/.*: //' || echo '?')"
echo "ringsocks starts one worker per online CPU by default (-w N); --cpus LIST pins worker i to the i-th CPU of LIST."
pids=$(pgrep -x ringsocks 2>/dev/null || true)
if [ -z "$pids" ]; then
  echo "No ringsocks running."
  exit 0
fi
# A ringsocks's command line with its passwords masked: --user NAME:***,
# socks5://USER:***@HOST:PORT (socks5h:// too). This output gets pasted into tickets and chats;
# the passwords are still in /proc/PID/cmdline: --users-file, --upstream-file and --via-file
# keep them out of it.
masked_cmdline() { # PID
  local a prev= out=() argv=()
  mapfile -d '' -t argv <"/proc/$1/cmdline" 2>/dev/null || return 1
  for a in "${argv[@]}"; do
    if [ "$prev" = --user ]; then
      a="${a%%:*}:***"
    elif [[ $a == --user=* ]]; then
      a="${a%%=*}=$(v=${a#*=}; echo "${v%%:*}"):***"
    fi
    # socks5://USER:PASS@HOST: the user ends at the first ':', the password at the last '@'
    # (as ringsocks splits them)
    if [[ $a =~ ^(.*socks5h?://[^:]*):.*@([^@]*)$ ]]; then
      a="${BASH_REMATCH[1]}:***@${BASH_REMATCH[2]}"
    fi
    out+=("$a")
    prev=$a
  done
  echo "${out[*]}"
}

for pid in $pids; do
  args=$(masked_cmdline "$pid") || continue
  echo
  echo "ringsocks pid $pid: $args"
  printf '  %-8s %-16s %-12s %-9s %s\n' TID name allowed last_cpu state
  for t in /proc/"$pid"/task/*; do
    tid=${t##*/}
    name=$(cat "$t/comm" 2>/dev/null) || continue
    allowed=$(awk '/^Cpus_allowed_list:/ { print $2 }' "$t/status" 2>/dev/null)
    # /proc/PID/task/TID/stat field 39 is the CPU it last ran on; field 3 its state.
    read -r state last < <(sed 's/^.*) //' "$t/stat" 2>/dev/null | awk '{ print $1, $37 }')
    printf '  %-8s %-16s %-12s %-9s %s\n' "$tid" "$name" "${allowed:-?}" "${last:-?}" "${state:-?}"
  done
  echo "  (the first line is the main thread; then the workers, then any io_uring io-wq threads (iou-wrk-*))"
done
