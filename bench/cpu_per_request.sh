#!/usr/bin/env bash
# CPU time per request of the relay and the agent, over an exact request
# count: utime+stime from /proc around N POSTs sent by examples/bench_load.
# Quicker and steadier than a wrk run for one before/after question.
#
#   bench/cpu_per_request.sh [WT_BIN] [N] [SIZE] [CONC] [-- AGENT_ARGS...]
#
# e.g. bench/cpu_per_request.sh target/release/whtunnel 40000 1024 32 -- --no-capture
# RELAY_ARGS="--threads 2" adds flags to the relay's command line; EMBEDDED=1
# measures one `listen` process with its embedded relay instead (no relay
# process; the "agent" figure is the whole process).
# Needs the release examples bench_target and bench_load (cargo build
# --release --example bench_target --example bench_load). Loopback only;
# every process it starts is stopped on exit; every wait is bounded.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
POS=()
while [[ $# -gt 0 && "$1" != "--" ]]; do POS+=("$1"); shift; done
[[ "${1:-}" == "--" ]] && shift
WT=${POS[0]:-$ROOT/target/release/whtunnel}
N=${POS[1]:-40000} SIZE=${POS[2]:-1024} CONC=${POS[3]:-32}
EX="$ROOT/target/release/examples"
W=$(mktemp -d /tmp/whtunnel-cpu.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT
wait_for() { # FILE REGEX
  local i
  for i in $(seq 100); do grep -qE "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "cpu_per_request: no '$2' in $1" >&2; cat "$1" >&2; exit 1
}
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }

"$EX/bench_target" > "$W/app.out" & PIDS+=($!)
wait_for "$W/app.out" '^listening '
APP=$(sed -n 's/^listening 127.0.0.1:\([0-9]*\)$/\1/p' "$W/app.out")
if [[ "${EMBEDDED:-0}" == 1 ]]; then
  WHTUNNEL_BENCH=1 HOME="$W/home" "$WT" listen "127.0.0.1:$APP" --listen 127.0.0.1:0 --name cpu \
    --data-dir "$W/agent" --no-tui "$@" > "$W/agent.out" 2> "$W/agent.err" & AGENT=$!; PIDS+=($AGENT)
  wait_for "$W/agent.out" '^Forwarding '
  RA=$(grep -oE 'http://[0-9.]+:[0-9]+' "$W/agent.out" | head -1 | cut -d/ -f3)
  RELAY=$AGENT
else
  # shellcheck disable=SC2086 # RELAY_ARGS is a list of flags
  WHTUNNEL_BENCH=1 "$WT" relay --listen 127.0.0.1:0 --token cpu-bench --data-dir "$W/relay" \
    --rate-limit 0 ${RELAY_ARGS:-} > "$W/relay.out" 2> "$W/relay.err" & RELAY=$!; PIDS+=($RELAY)
  wait_for "$W/relay.err" 'listening on'
  RA=$(grep -oE 'listening on [0-9.]+:[0-9]+' "$W/relay.err" | tail -1 | cut -d' ' -f3)
  WHTUNNEL_BENCH=1 "$WT" listen "127.0.0.1:$APP" --relay "http://$RA" --token cpu-bench --name cpu \
    --data-dir "$W/agent" --no-tui "$@" > "$W/agent.out" 2> "$W/agent.err" & AGENT=$!; PIDS+=($AGENT)
  wait_for "$W/agent.out" '^Forwarding '
fi
URL="http://$RA/t/cpu/hook"
timeout 300 "$EX/bench_load" "$URL" "$CONC" 10000 "$SIZE" > /dev/null # warm-up
sleep 0.5
r0=$(cpu "$RELAY"); a0=$(cpu "$AGENT")
out=$(timeout 600 "$EX/bench_load" "$URL" "$CONC" "$N" "$SIZE")
sleep 0.5 # the last exchanges are recorded
r1=$(cpu "$RELAY"); a1=$(cpu "$AGENT")
tck=$(getconf CLK_TCK)
echo "$out | relay $(( (r1 - r0) * 1000000 / tck / N )) us/req, agent $(( (a1 - a0) * 1000000 / tck / N )) us/req (agent args: ${*:-none})"
