#!/usr/bin/env bash
# The tunnel transport alone (examples/transport_proto.rs): h2 over the
# websocket (today's stack) against yamux + HTTP/1 over the same websocket,
# per side (relay, agent), in instructions per request (callgrind) and
# native CPU per request, at c=1 and c=32, 1 KiB POSTs. See
# docs/benchmarks.md ("Transport") and docs/protocol.md ("Transport decision").
#
#   bench/transport.sh [--bin PATH] [--label NAME] [--protos "h2 yamux"]
#                      [--conc "1 32"] [--runs N] [--no-callgrind] [--no-native]
#                      [--out FILE.jsonl] [-- EXTRA ARGS FOR BOTH SIDES]
#
# Callgrind: two runs of 500 and 2,500 measured requests (same 200 warm-up);
# the difference of each process's total over 2,000 is its instructions per
# request, free of start-up and shutdown. Native: 20,000 requests at c=32,
# 4,000 at c=1, CPU summed over every thread between two marker requests,
# interleaved --runs times (default 3). Loopback only; every wait is bounded.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/target/release/examples/transport_proto"
LABEL=""
PROTOS="h2 yamux"
CONCS="1 32"
RUNS=3
CALLGRIND=1
NATIVE=1
OUT=""
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --bin) BIN="$2"; shift ;;
    --label) LABEL="$2"; shift ;;
    --protos) PROTOS="$2"; shift ;;
    --conc) CONCS="$2"; shift ;;
    --runs) RUNS="$2"; shift ;;
    --no-callgrind) CALLGRIND=0 ;;
    --no-native) NATIVE=0 ;;
    --out) OUT="$2"; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[[ -x "$BIN" ]] || { echo "transport: $BIN missing (cargo build --release --example transport_proto)" >&2; exit 1; }
OUT="${OUT:-/dev/stdout}"
WORK=$(mktemp -d /tmp/whtunnel-transport.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# pair PREFIX... : runs relay and agent (each under PREFIX, may be empty)
# with the given proto/conc/requests; relay JSON in $WORK/relay.out, agent
# JSON in $WORK/agent.out.
pair() { # PROTO CONC REQUESTS WRAP...
  local proto=$1 conc=$2 n=$3; shift 3
  local wrap=("$@") i
  rm -f "$WORK"/relay.out "$WORK"/agent.out
  "${wrap[@]}" "$BIN" relay --proto "$proto" --conc "$conc" --requests "$n" --warmup 200 "${EXTRA[@]}" \
    >"$WORK/relay.out" 2>"$WORK/relay.err" &
  local relay=$!; PIDS+=("$relay")
  for i in $(seq 600); do grep -q '^listening ' "$WORK/relay.out" 2>/dev/null && break; sleep 0.1; done
  local addr; addr=$(awk '/^listening /{print $2}' "$WORK/relay.out")
  [[ -n "$addr" ]] || { cat "$WORK/relay.err" >&2; exit 1; }
  "${wrap[@]}" "$BIN" agent "$addr" --proto "$proto" "${EXTRA[@]}" >"$WORK/agent.out" 2>"$WORK/agent.err" &
  local agent=$!; PIDS+=("$agent")
  timeout 900 tail --pid="$relay" -f /dev/null || { echo "transport: relay hung" >&2; exit 1; }
  timeout 60 tail --pid="$agent" -f /dev/null || kill "$agent" 2>/dev/null || true
  wait "$relay" || { cat "$WORK/relay.err" >&2; exit 1; }
  wait "$agent" 2>/dev/null || true
}

total_ir() { awk '/^totals:/ {print $2}' "$1"; }

for conc in $CONCS; do
  if [[ $CALLGRIND == 1 ]]; then
    for proto in $PROTOS; do
      declare -A ir=()
      for n in 500 2500; do
        rm -f "$WORK"/cg.*
        pair "$proto" "$conc" "$n" valgrind --tool=callgrind --quiet --dump-instr=no --collect-jumps=no \
          --callgrind-out-file="$WORK/cg.%p"
        # The relay's pid file is the one whose command line says relay.
        for f in "$WORK"/cg.*; do
          side=$(grep -q '^cmd:.* relay ' "$f" && echo relay || echo agent)
          ir[$side.$n]=$(total_ir "$f")
        done
      done
      for side in relay agent; do
        per=$(( (ir[$side.2500] - ir[$side.500]) / 2000 ))
        jq -nc --arg l "$LABEL" --arg p "$proto" --arg s "$side" --argjson c "$conc" --argjson ir "$per" \
          --arg extra "${EXTRA[*]}" \
          '{kind: "instructions", label: $l, proto: $p, side: $s, conc: $c, size: 1024, extra: $extra,
            instructions_per_request: $ir}' >> "$OUT"
        echo "transport: $LABEL $proto c=$conc $side $per instructions/request" >&2
      done
    done
  fi
  if [[ $NATIVE == 1 ]]; then
    n=20000; [[ $conc == 1 ]] && n=4000
    for run in $(seq "$RUNS"); do
      for proto in $PROTOS; do
        pair "$proto" "$conc" "$n"
        r=$(grep '^{' "$WORK/relay.out"); a=$(grep '^{' "$WORK/agent.out")
        jq -nc --arg l "$LABEL" --argjson r "$r" --argjson a "$a" --argjson run "$run" --arg extra "${EXTRA[*]}" \
          '{kind: "native", label: $l, proto: ($r.proto | ascii_downcase), conc: $r.conc, size: $r.size,
            run: $run, extra: $extra, requests: $r.requests, rps: $r.rps, p50_us: $r.p50_us, p99_us: $r.p99_us,
            relay_cpu_ns_per_request: $r.cpu_ns_per_request,
            agent_cpu_ns_per_request: (($a.cpu_ns / $r.requests) | floor)}' >> "$OUT"
        echo "transport: $LABEL $proto c=$conc run $run: $(jq -c '{rps,p50_us,cpu_ns_per_request}' <<<"$r") agent $(( $(jq .cpu_ns <<<"$a") / n )) ns" >&2
      done
    done
  fi
done
