#!/usr/bin/env bash
# Instructions per request, per component, under callgrind: the one
# performance number that does not move with this machine's load. Called by
# `bench/run.sh --only instructions`; runs on its own too:
#
#   bench/instructions.sh WT_BIN TARGET_BIN LOAD_BIN OUT_JSONL [REQUESTS] [CONC] [SIZE]
#
# For each agent mode (no capture; capture on, store filling; capture on,
# store full so retention deletes on every insert) it starts the app
# natively and the relay and agent under `valgrind --tool=callgrind`, warms
# up, zeroes the counters, sends exactly REQUESTS POSTs of SIZE bytes over
# CONC connections, dumps, and writes one JSON line per component:
#   {"mode":..., "component":"relay"|"agent", "instructions_per_request":...}
# INSTR_KEEP=DIR keeps the callgrind dumps for callgrind_annotate
# (DIR/MODE.BODY.relay.cg, DIR/MODE.BODY.agent.cg).
# INSTR_MODES="no-capture ..." measures only those modes.
# INSTR_BODY=json sends an unsigned JSON event (bench_load's BENCH_BODY=json:
# what parsing a webhook's body costs) instead of SIZE bytes of `x`, and
# INSTR_BODY=stripe the same with a Stripe-Signature header (the sender is
# recognised, its body read for the event type and id; the signature is not
# checked, the agent has no secret), INSTR_BODY=shopify with Shopify's
# headers (recognised by them, event and id read from them, body unread);
# each line says which ("body").
# Loopback only; every process is stopped on exit; every wait is bounded.
set -euo pipefail

WT=$1 TARGET_BIN=$2 LOAD_BIN=$3 OUT=$4
REQUESTS=${5:-2000} CONC=${6:-32} SIZE=${7:-1024}
BODY=${INSTR_BODY:-x}
case $BODY in
  x|json|stripe|shopify) export BENCH_BODY=$BODY ;;
  *) echo "instructions: INSTR_BODY must be x, json, stripe or shopify, not $BODY" >&2; exit 2 ;;
esac
# The store-full mode keeps this many exchanges, and the warm-up sends more
# than that, so every measured insert also deletes the oldest.
KEEP=500
WARMUP=$((KEEP + 200))
command -v valgrind >/dev/null || { echo "instructions: valgrind is required (apt-get install valgrind)" >&2; exit 1; }
command -v callgrind_control >/dev/null || { echo "instructions: callgrind_control is required (valgrind package)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/whtunnel-instr.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
TOKEN="instr-$RANDOM$RANDOM$RANDOM"

wait_for() { # FILE REGEX SECONDS PID
  local i
  for i in $(seq $(($3 * 10))); do
    grep -qE "$2" "$1" 2>/dev/null && return 0
    kill -0 "$4" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
# Dumps PID's counters (zeroed before the measured load) and prints its Ir total.
instructions() {
  local pid=$1 tag=$2
  callgrind_control -d "$tag" "$pid" >/dev/null
  # The dump lands asynchronously; wait for its summary line.
  local f="$WORK/cg.$pid.1" i
  for i in $(seq 300); do
    grep -q '^totals:' "$f" 2>/dev/null && break
    sleep 0.1
  done
  awk '/^totals:/ {print $2}' "$f"
}

"$TARGET_BIN" > "$WORK/app.out" &
PIDS+=($!); APP=$!
wait_for "$WORK/app.out" '^listening ' 10 "$APP" || { echo "instructions: app did not start" >&2; exit 1; }
APP_PORT=$(sed -n 's/^listening 127.0.0.1:\([0-9]*\)$/\1/p' "$WORK/app.out")

# Instructions PID's dump spent in sha2's portable SHA-256. Valgrind hides
# the CPU's SHA extensions, so under callgrind SHA-256 runs in software,
# about 57 instructions a byte, a cost the native binary does not pay where
# the CPU has SHA-NI. Since protocol 3 the body-hash proof is BLAKE3 (whose
# SIMD paths valgrind runs), so this reads 0 unless signatures are checked;
# reported beside the total, and subtracted in
# instructions_per_request_native_sha.
soft_sha() {
  callgrind_annotate --inclusive=yes "$1" 2>/dev/null \
    | awk '/sha2::sha256::soft::compress/ { gsub(",", "", $1); if ($1 + 0 > m) m = $1 + 0 } END { print m + 0 }'
}

CG=(valgrind --tool=callgrind --quiet --dump-instr=no --collect-jumps=no)
for mode in ${INSTR_MODES:-no-capture capture store-full}; do
  args=()
  case $mode in
    no-capture) args=(--no-capture) ;;
    capture) args=(--keep-exchanges $((WARMUP + REQUESTS + 1000))) ;;
    store-full) args=(--keep-exchanges $KEEP) ;;
  esac
  rm -f "$WORK"/cg.*
  "${CG[@]}" --callgrind-out-file="$WORK/cg.%p" "$WT" relay --listen 127.0.0.1:0 --token "$TOKEN" \
    --data-dir "$WORK/relay-$mode" --rate-limit 0 >"$WORK/relay.out" 2>"$WORK/relay.err" &
  RELAY=$!; PIDS+=("$RELAY")
  wait_for "$WORK/relay.err" 'listening on' 60 "$RELAY" || { cat "$WORK/relay.err" >&2; exit 1; }
  RELAY_ADDR=$(grep -oE 'listening on [0-9.]+:[0-9]+' "$WORK/relay.err" | tail -1 | cut -d' ' -f3)
  "${CG[@]}" --callgrind-out-file="$WORK/cg.%p" "$WT" listen "127.0.0.1:$APP_PORT" --relay "http://$RELAY_ADDR" \
    --token "$TOKEN" --name instr --data-dir "$WORK/agent-$mode" --no-tui "${args[@]}" \
    >"$WORK/agent.out" 2>"$WORK/agent.err" &
  AGENT=$!; PIDS+=("$AGENT")
  wait_for "$WORK/agent.out" '^Forwarding ' 120 "$AGENT" || { cat "$WORK/agent.err" >&2; exit 1; }
  URL="http://$RELAY_ADDR/t/instr/hook"
  timeout 600 "$LOAD_BIN" "$URL" "$CONC" "$WARMUP" "$SIZE" >"$WORK/warm.txt"
  sleep 1 # the last warm-up exchanges reach the store before zeroing
  callgrind_control -z "$RELAY" >/dev/null
  callgrind_control -z "$AGENT" >/dev/null
  timeout 600 "$LOAD_BIN" "$URL" "$CONC" "$REQUESTS" "$SIZE" >"$WORK/load.txt"
  ok=$(awk '{print $4}' "$WORK/load.txt")
  sleep 1 # the measured exchanges are stored before the dump
  r=$(instructions "$RELAY" relay)
  a=$(instructions "$AGENT" agent)
  rs=$(soft_sha "$WORK/cg.$RELAY.1")
  as=$(soft_sha "$WORK/cg.$AGENT.1")
  # INSTR_KEEP=DIR keeps the dumps for callgrind_annotate.
  if [[ -n "${INSTR_KEEP:-}" ]]; then
    mkdir -p "$INSTR_KEEP"
    cp "$WORK/cg.$RELAY.1" "$INSTR_KEEP/$mode.$BODY.relay.cg"
    cp "$WORK/cg.$AGENT.1" "$INSTR_KEEP/$mode.$BODY.agent.cg"
  fi
  for pair in "relay $r $rs" "agent $a $as"; do
    set -- $pair
    jq -nc --arg m "$mode" --arg body "$BODY" --arg c "$1" --argjson ir "$2" --argjson sha "$3" --argjson n "$REQUESTS" \
      --argjson ok "$ok" --argjson conc "$CONC" --argjson size "$SIZE" \
      '{mode: $m, body: $body, component: $c, requests: $n, ok: $ok, concurrency: $conc, body_bytes: $size,
        instructions: $ir, instructions_per_request: (($ir / $n) | floor),
        soft_sha256_per_request: (($sha / $n) | floor),
        instructions_per_request_native_sha: ((($ir - $sha) / $n) | floor)}' >> "$OUT"
  done
  echo "instructions: $mode ($BODY body) relay $((r / REQUESTS)) agent $((a / REQUESTS)) per request," \
    "of which software SHA-256 relay $((rs / REQUESTS)) agent $((as / REQUESTS)) ($ok/$REQUESTS ok)" >&2
  kill "$AGENT" "$RELAY" 2>/dev/null || true
  wait "$AGENT" "$RELAY" 2>/dev/null || true
done
