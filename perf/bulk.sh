#!/usr/bin/env bash
# One bulk download through ringsocks versus the same download direct, in one run:
# throughput of each (curl) and the proxy's CPU seconds (utime+stime of all its threads).
#   perf/bulk.sh [SIZE_MIB] [ROUNDS]      default 1024 MiB, 3 rounds, interleaved
# Loopback only: nginx on 127.0.0.1, ringsocks on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-1024}
rounds=${2:-3}
bash scripts/setup.sh
command -v nginx >/dev/null || {
  [ "$(id -u)" -eq 0 ] && SUDO= || SUDO=sudo
  $SUDO apt-get install -y -qq nginx-light >/dev/null
}
dir=$(bash scripts/build.sh release)
work=$(mktemp -d)
nport=$((20000 + RANDOM % 10000)); sport=$((nport + 1))
trap 'kill $rs_pid 2>/dev/null; [ -f $work/nginx.pid ] && kill $(cat $work/nginx.pid) 2>/dev/null; rm -rf $work' EXIT
mkdir -p $work/www
head -c $((size << 20)) /dev/urandom > $work/www/file.bin
cat > $work/nginx.conf <<CONF
worker_processes 1;
daemon on;
pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 1024; }
http { access_log off; sendfile on;
  client_body_temp_path $work; proxy_temp_path $work; fastcgi_temp_path $work;
  uwsgi_temp_path $work; scgi_temp_path $work;
  server { listen 127.0.0.1:$nport; root $work/www; } }
CONF
nginx -c $work/nginx.conf
"$dir/ringsocks" -l 127.0.0.1:$sport 2>$work/rs.log &
rs_pid=$!
sleep 0.5
hz=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' /proc/$rs_pid/stat; }
url=http://127.0.0.1:$nport/file.bin
printf '%-8s %12s %12s %14s\n' round direct_MB/s proxy_MB/s proxy_cpu_s
for r in $(seq 1 "$rounds"); do
  d=$(curl -s -o /dev/null -w '%{speed_download}' $url)
  c0=$(cpu)
  p=$(curl -s -o /dev/null -w '%{speed_download}' --socks5 127.0.0.1:$sport $url)
  c1=$(cpu)
  awk -v r=$r -v d=$d -v p=$p -v c=$((c1 - c0)) -v hz=$hz \
    'BEGIN { printf "%-8s %12.0f %12.0f %14.2f   (proxy/direct %.2f)\n", r, d/1e6, p/1e6, c/hz, p/d }'
done
