#!/usr/bin/env bash
# A rawrt cluster on this machine: Redis, three rawrt nodes and nginx in front, all on
# loopback ports picked free at start.
#
#   deploy/local-cluster.sh up [--round-robin] [--sentinel] [DIR]
#                                 start; the last line printed is the front address,
#                                 http://127.0.0.1:PORT. --sentinel: a Redis primary, a
#                                 replica and three Sentinels instead of one Redis
#   deploy/local-cluster.sh down [DIR]    stop what `up` started, remove DIR
#
# With --sentinel the nodes find the primary through the Sentinels (--redis-sentinel,
# --redis-master rawrt) and follow a failover on their own: kill the pid of "redis-primary"
# (in DIR/pids) and watch the nodes come back ready on the replica (the front keeps serving;
# resuming clients get a reset, since the replica may lack the last writes). DIR/sentinels
# holds the Sentinels' HOST:PORT list.
#
# DIR holds the cluster's state (default: $TMPDIR/rawrt-cluster): pids (what `down` stops),
# front-url, nodes (one node URL a line), redis-url, logs/ (redis, node-N, and nginx's
# access.log and error.log), nginx/nginx.conf (the rendered config), nginx.pid, tmp/ (nginx's
# temp folders, unused) and redis/ (its working dir, left empty: no persistence; with
# --sentinel, redis/primary, redis/replica and redis/sentinel-N with each Sentinel's config).
#
# Environment: PYTHON (the interpreter that has rawrt installed; default python3),
# RAWRT_CLUSTER_NODES (3), RAWRT_CLUSTER_ROUND_ROBIN=1 (same as --round-robin),
# RAWRT_CLUSTER_TIMEOUT (seconds to wait for each program to be ready; 20), REDIS_SERVER and
# NGINX (the programs; found on PATH or in the usual sbin folders). Every other RAWRT_<OPTION>
# reaches the nodes as usual (RAWRT_SSE_HEARTBEAT=5, ...).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python3}
NODES=${RAWRT_CLUSTER_NODES:-3}
TIMEOUT=${RAWRT_CLUSTER_TIMEOUT:-20}
MARKER=.rawrt-cluster       # only a directory holding this file is ever removed
STOP_TIMEOUT=15             # seconds `down` waits after SIGTERM before SIGKILL (> rawrt's 5 s)
ATTEMPTS=3                  # a port taken between picking and binding: retry with another

die() { echo "local-cluster: $*" >&2; exit 1; }
note() { echo "$*"; }

usage() {
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

find_program() { # NAME: the path of NAME on PATH or in an sbin folder, or nothing
  local dir
  if command -v "$1" >/dev/null 2>&1; then command -v "$1"; return; fi
  for dir in /usr/sbin /usr/local/sbin /sbin /usr/local/nginx/sbin; do
    if [[ -x $dir/$1 ]]; then echo "$dir/$1"; return; fi
  done
}

# --- helpers in Python: the one interpreter the cluster needs anyway ----------------------

free_ports() { # N: N distinct free loopback TCP ports, bound together so they differ
  "$PYTHON" - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
}

wait_ready() { # KIND TARGET PID: wait until TARGET answers (bounded); fail if PID exits first
  "$PYTHON" - "$1" "$2" "$3" "$TIMEOUT" <<'EOF'
import os, socket, sys, time, urllib.error, urllib.request
kind, target, pid, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])

def alive():
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        pass
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False

def ready():
    if kind == "redis":
        host, port = target.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    try:
        with urllib.request.urlopen(target, timeout=2) as r:
            return r.status == 200
    except urllib.error.HTTPError:
        return False

deadline = time.monotonic() + timeout
for _ in range(int(timeout / 0.05) + 1):
    if not alive():
        sys.exit(f"{target}: the process (pid {pid}) exited")
    try:
        if ready():
            sys.exit(0)
    except OSError:
        pass
    if time.monotonic() >= deadline:
        break
    time.sleep(0.05)
sys.exit(f"{target}: not ready after {timeout:g} s")
EOF
}

render_nginx_conf() { # OUT LISTEN NGINX_DIR UPSTREAM SERVER_PORT...: fill in the template
  "$PYTHON" - "$HERE/nginx.conf" "$@" <<'EOF'
import re, sys
template, out, listen, nginx_dir, upstream, *ports = sys.argv[1:]
servers = "\n        ".join(
    f"server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;" for p in ports
)
values = {"NGINX_LISTEN": listen, "NGINX_DIR": nginx_dir,
          "RAWRT_SERVERS": servers, "RAWRT_UPSTREAM": upstream}
text = open(template).read()
for name, value in values.items():
    text = text.replace("${" + name + "}", value)
left = sorted(set(re.findall(r"\$\{[A-Za-z_]+\}", text)))
if left:
    sys.exit(f"{template}: no value for {', '.join(left)}")
open(out, "w").write(text)
EOF
}

start_time() { # PID: the kernel's start time of PID ("-" where /proc is missing)
  if [[ -r /proc/$1/stat ]]; then
    local stat
    stat=$(<"/proc/$1/stat")
    stat=${stat##*) }
    # shellcheck disable=SC2086
    set -- $stat
    echo "${20}"      # field 22 of stat; fields 1 and 2 (pid, comm) were cut off above
  else
    echo -
  fi
}

is_ours() { # PID START: PID is alive and is still the process that was recorded
  local state
  if [[ -r /proc/$1/stat ]]; then
    state=$(<"/proc/$1/stat")
    state=${state##*) }
    [[ ${state%% *} != Z ]] || return 1
    [[ $2 == - || $(start_time "$1") == "$2" ]]
  else
    kill -0 "$1" 2>/dev/null
  fi
}

record() { # NAME PID: remember a started process for `down`
  echo "$1 $2 $(start_time "$2")" >>"$STATE/pids"
}

tail_logs() {
  local f
  for f in "$STATE"/logs/*; do
    [[ -s $f ]] || continue
    echo "--- ${f##*/} (last lines)" >&2
    tail -n 15 "$f" >&2
  done
}

# --- down -----------------------------------------------------------------------------------

stop_recorded() { # stop every recorded process, last started first; true if all are gone
  local name pid start left i
  local -a names=() pids=() starts=()
  [[ -f $STATE/pids ]] || return 0
  while read -r name pid start; do
    names=("$name" "${names[@]}") pids=("$pid" "${pids[@]}") starts=("$start" "${starts[@]}")
  done <"$STATE/pids"
  for i in "${!pids[@]}"; do
    if is_ours "${pids[i]}" "${starts[i]}"; then
      echo "stopping ${names[i]} (pid ${pids[i]})"
      kill -TERM "${pids[i]}" 2>/dev/null || true
    fi
  done
  for ((tick = 0; tick < STOP_TIMEOUT * 10; tick++)); do
    left=0
    for i in "${!pids[@]}"; do
      if is_ours "${pids[i]}" "${starts[i]}"; then left=1; fi
    done
    ((left)) || return 0
    sleep 0.1
  done
  for i in "${!pids[@]}"; do
    if is_ours "${pids[i]}" "${starts[i]}"; then
      echo "killing ${names[i]} (pid ${pids[i]}): still running after ${STOP_TIMEOUT} s" >&2
      kill -KILL "${pids[i]}" 2>/dev/null || true
    fi
  done
  for ((tick = 0; tick < 20; tick++)); do
    left=0
    for i in "${!pids[@]}"; do
      if is_ours "${pids[i]}" "${starts[i]}"; then left=1; fi
    done
    ((left)) || return 0
    sleep 0.1
  done
  return 1
}

cmd_down() {
  if [[ ! -e $STATE ]]; then
    echo "nothing to stop in $STATE"
    return 0
  fi
  [[ -f $STATE/$MARKER ]] || die "$STATE was not made by local-cluster.sh; not touching it"
  stop_recorded || die "some processes did not stop; $STATE is kept"
  rm -rf -- "$STATE"
  echo "stopped; removed $STATE"
}

# --- up -------------------------------------------------------------------------------------

start_redis() {
  local attempt port
  for ((attempt = 1; attempt <= ATTEMPTS; attempt++)); do
    port=$(free_ports 1)
    # No persistence: a restarted Redis starts empty, and rawrt answers the lost history with
    # resets, never with a silent gap.
    "$REDIS_SERVER" --bind 127.0.0.1 --port "$port" --protected-mode yes \
      --save '' --appendonly no --dir "$STATE/redis" --daemonize no \
      </dev/null >>"$STATE/logs/redis.log" 2>&1 &
    local pid=$!
    record redis "$pid"
    if wait_ready redis "127.0.0.1:$port" "$pid" 2>>"$STATE/logs/redis.log"; then
      REDIS_URL="redis://127.0.0.1:$port/0"
      REDIS_ARGS=(--redis "$REDIS_URL")
      echo "$REDIS_URL" >"$STATE/redis-url"
      note "redis  127.0.0.1:$port  pid $pid"
      return 0
    fi
    stop_one "$pid"
  done
  return 1
}

start_one_redis() { # NAME ARGS...: a Redis (or Sentinel) on a free port; sets REDIS_PORT
  local attempt pid name=$1
  shift
  mkdir -p "$STATE/redis/$name"
  for ((attempt = 1; attempt <= ATTEMPTS; attempt++)); do
    REDIS_PORT=$(free_ports 1)
    if [[ $name == sentinel-* ]]; then
      # Sentinel rewrites its config as it learns the topology: each has its own file.
      printf '%s\n' "port $REDIS_PORT" "bind 127.0.0.1" "dir $STATE/redis/$name" \
        "sentinel monitor rawrt 127.0.0.1 $PRIMARY_PORT 2" \
        "sentinel down-after-milliseconds rawrt 2000" \
        "sentinel failover-timeout rawrt 10000" >"$STATE/redis/$name/sentinel.conf"
      "$REDIS_SERVER" "$STATE/redis/$name/sentinel.conf" --sentinel --daemonize no \
        </dev/null >>"$STATE/logs/$name.log" 2>&1 &
    else
      "$REDIS_SERVER" --bind 127.0.0.1 --port "$REDIS_PORT" --protected-mode yes \
        --save '' --appendonly no --dir "$STATE/redis/$name" --daemonize no "$@" \
        </dev/null >>"$STATE/logs/$name.log" 2>&1 &
    fi
    pid=$!
    record "$name" "$pid"
    if wait_ready redis "127.0.0.1:$REDIS_PORT" "$pid" 2>>"$STATE/logs/$name.log"; then
      note "$name  127.0.0.1:$REDIS_PORT  pid $pid"
      return 0
    fi
    stop_one "$pid"
  done
  return 1
}

start_sentinel_group() { # a primary, its replica, three Sentinels: sets REDIS_ARGS
  local n
  local -a sentinels=()
  start_one_redis redis-primary || return 1
  PRIMARY_PORT=$REDIS_PORT
  start_one_redis redis-replica --replicaof 127.0.0.1 "$PRIMARY_PORT" || return 1
  for n in 1 2 3; do
    start_one_redis "sentinel-$n" || return 1
    sentinels+=("127.0.0.1:$REDIS_PORT")
  done
  local joined
  joined=$(IFS=,; echo "${sentinels[*]}")
  echo "$joined" >"$STATE/sentinels"
  REDIS_ARGS=(--redis-sentinel "$joined" --redis-master rawrt)
}

launch_node() { # N PORT: start node N on PORT, in the background
  "$PYTHON" -m rawrt --host 127.0.0.1 --port "$2" "${REDIS_ARGS[@]}" \
    </dev/null >>"$STATE/logs/node-$1.log" 2>&1 &
  NODE_PIDS[$1]=$!
  record "node-$1" "$!"
}

start_nodes() { # start every node at once, then wait for each (a failed one gets new ports)
  local attempt n port
  local -a ports
  read -r -a ports <<<"$(free_ports "$NODES")"
  for ((n = 1; n <= NODES; n++)); do
    NODE_PORTS[n]=${ports[n - 1]}
    launch_node "$n" "${NODE_PORTS[n]}"
  done
  for ((n = 1; n <= NODES; n++)); do
    for ((attempt = 1; ; attempt++)); do
      if wait_ready http "http://127.0.0.1:${NODE_PORTS[n]}/readyz" "${NODE_PIDS[n]}" \
        2>>"$STATE/logs/node-$n.log"; then
        break
      fi
      stop_one "${NODE_PIDS[n]}"
      ((attempt < ATTEMPTS)) || return 1
      NODE_PORTS[n]=$(free_ports 1)
      launch_node "$n" "${NODE_PORTS[n]}"
    done
    echo "http://127.0.0.1:${NODE_PORTS[n]}" >>"$STATE/nodes"
    note "node-$n http://127.0.0.1:${NODE_PORTS[n]}  pid ${NODE_PIDS[n]}"
  done
}

start_nginx() {
  local attempt port pid conf=$STATE/nginx/nginx.conf
  local -a args=(-p "$STATE/nginx/" -c "$conf" -e "$STATE/logs/error.log")
  for ((attempt = 1; attempt <= ATTEMPTS; attempt++)); do
    port=$(free_ports 1)
    render_nginx_conf "$conf" "127.0.0.1:$port" "$STATE" "$UPSTREAM" "${NODE_PORTS[@]}"
    "$NGINX" -t -q "${args[@]}" 2>>"$STATE/logs/error.log" || return 1
    "$NGINX" "${args[@]}" -g 'daemon off;' </dev/null >>"$STATE/logs/error.log" 2>&1 &
    pid=$!
    record nginx "$pid"
    if wait_ready http "http://127.0.0.1:$port/healthz" "$pid" 2>>"$STATE/logs/error.log"; then
      FRONT="http://127.0.0.1:$port"
      echo "$FRONT" >"$STATE/front-url"
      note "nginx  $FRONT  pid $pid  upstream $UPSTREAM"
      return 0
    fi
    stop_one "$pid"
  done
  return 1
}

stop_one() { # PID: a process that failed to come up (it is still in pids; down skips it)
  kill -TERM "$1" 2>/dev/null || true
  for ((tick = 0; tick < 50; tick++)); do
    is_ours "$1" "$(start_time "$1")" || return 0
    sleep 0.1
  done
  kill -KILL "$1" 2>/dev/null || true
}

cmd_up() {
  if [[ -e $STATE ]]; then
    if [[ -f $STATE/$MARKER ]]; then
      die "a cluster is already up in $STATE; run: $0 down $STATE"
    elif [[ -n $(ls -A "$STATE") ]]; then
      die "$STATE exists and is not empty"
    fi
  fi
  REDIS_SERVER=${REDIS_SERVER:-$(find_program redis-server)}
  NGINX=${NGINX:-$(find_program nginx)}
  [[ -n $REDIS_SERVER ]] || die "redis-server not found (apt-get install redis-server)"
  [[ -n $NGINX ]] || die "nginx not found (apt-get install nginx-light)"
  "$PYTHON" -c 'import rawrt' 2>/dev/null || die "$PYTHON cannot import rawrt (pip install -e .)"
  [[ $NODES =~ ^[1-9][0-9]?$ ]] || die "RAWRT_CLUSTER_NODES must be 1..99"
  mkdir -p "$STATE"
  STATE=$(cd "$STATE" && pwd)
  touch "$STATE/$MARKER"
  mkdir -p "$STATE/logs" "$STATE/redis" "$STATE/nginx" "$STATE/tmp"
  : >"$STATE/pids"

  # From here on, a failure stops whatever was started and leaves nothing behind.
  trap undo_up EXIT
  if [[ $SENTINEL == 1 ]]; then
    start_sentinel_group || exit 1
  else
    start_redis || exit 1
  fi
  NODE_PORTS=() NODE_PIDS=()
  start_nodes || exit 1
  start_nginx || exit 1
  trap - EXIT
  echo "$FRONT"
}

undo_up() {
  echo "local-cluster: up failed; stopping what it started" >&2
  tail_logs
  stop_recorded >&2 || true
  rm -rf -- "$STATE"
}

# --- command line -----------------------------------------------------------------------------

COMMAND=${1:-}
[[ -n $COMMAND ]] || usage
shift
ROUND_ROBIN=${RAWRT_CLUSTER_ROUND_ROBIN:-0}
SENTINEL=0
STATE=
for arg in "$@"; do
  case $arg in
    --round-robin) ROUND_ROBIN=1 ;;
    --sentinel) SENTINEL=1 ;;
    -h | --help) usage ;;
    -*) die "unknown option $arg" ;;
    *) [[ -z $STATE ]] || die "one DIR only"; STATE=$arg ;;
  esac
done
STATE=${STATE:-${TMPDIR:-/tmp}/rawrt-cluster}
if [[ $ROUND_ROBIN == 1 ]]; then UPSTREAM=rawrt_round_robin; else UPSTREAM=rawrt_sticky; fi

case $COMMAND in
  up) cmd_up ;;
  down) cmd_down ;;
  *) usage ;;
esac
