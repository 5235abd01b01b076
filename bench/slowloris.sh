#!/usr/bin/env bash
# Legitimate webhook latency while 1,000 slowloris connections hold the relay.
#
#   bench/slowloris.sh            # slow headers (slowhttptest -H)
#   MODE=-B bench/slowloris.sh    # slow bodies (R-U-Dead-Yet)
#
# Everything on loopback, bounded: the attack lasts ATTACK_SECS (default
# 30 s); the legit client sends LEGIT requests (default 150, about 4 s)
# right after the attack has opened its connections, while all are held.
# The attack comes from 127.0.0.1; the legit sender binds 127.0.0.2 (Linux
# routes all of 127.0.0.0/8 to lo), so the per-IP connection cap applies
# to the attacker only. CAP (default 4096) is raised above 1,000 so all
# attack connections are really held open; run with CAP=256 to see the
# default cap refuse most of them instead.
#
# Needs: slowhttptest (apt-get install slowhttptest), curl, python3, ss.
# Uses target/release/whtunnel if built, else target/debug/whtunnel
# (BIN=... to choose).
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${MODE:--H}
CONNS=${CONNS:-1000}
ATTACK_SECS=${ATTACK_SECS:-30}
LEGIT=${LEGIT:-150}
CAP=${CAP:-4096}
BIN=${BIN:-$( [ -x target/release/whtunnel ] && echo target/release/whtunnel || echo target/debug/whtunnel )}
command -v slowhttptest >/dev/null || { echo "slowhttptest missing: apt-get install -y slowhttptest" >&2; exit 1; }
[ -x "$BIN" ] || { echo "$BIN missing: cargo build" >&2; exit 1; }
ulimit -n 8192

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
[ -n "${KEEP_LOGS:-}" ] && trap 'cp "$work"/*.log "$KEEP_LOGS"/ 2>/dev/null; cleanup' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
APP_PORT=$(free_port)
RELAY_PORT=$(free_port)

# The app: answers every GET/POST with 200 at once.
python3 - "$APP_PORT" >/dev/null 2>&1 <<'PY' &
import sys
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        n = int(self.headers.get("content-length") or 0)
        self.rfile.read(n)
        self.send_response(200); self.send_header("content-length", "2"); self.end_headers()
        self.wfile.write(b"ok")
    do_GET = do_POST = answer
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
pids+=($!)

"$BIN" relay --listen "127.0.0.1:$RELAY_PORT" --token bench --data-dir "$work/relay" \
    --max-conns-per-ip "$CAP" >"$work/relay.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$RELAY_PORT/_whtunnel/health" >/dev/null && break; sleep 0.1; done

"$BIN" listen "$APP_PORT" --relay "http://127.0.0.1:$RELAY_PORT" --token bench --name bench \
    --no-tui --no-capture --data-dir "$work/agent" >"$work/agent.log" 2>&1 &
pids+=($!)
URL="http://127.0.0.1:$RELAY_PORT/t/bench/hook"
for _ in $(seq 50); do [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL")" = 200 ] && break; sleep 0.1; done

legit() { # $1 = count, $2 = output file
  for i in $(seq "$1"); do
    curl -s -o /dev/null --interface 127.0.0.2 --max-time 10 -X POST \
      -H 'content-type: application/json' -d "{\"id\":$i,\"type\":\"invoice.paid\"}" \
      -w '%{http_code} %{time_total}\n' "$URL" >>"$2" || echo "000 10" >>"$2"
    sleep 0.02
  done
}
stats() { # $1 = file: prints count, failures, p50, p99, max (ms)
  awk '{ if ($1 != 200) bad++; print $2 * 1000 }' "$1" | sort -n | awk -v f="$(awk '$1!=200' "$1" | wc -l)" '
    { v[NR] = $1 } END { p50 = v[int(NR*0.50+0.5)]; p99 = v[int(NR*0.99+0.5)];
      printf "n=%d non-200=%d p50=%.1fms p99=%.1fms max=%.1fms\n", NR, f, p50, p99, v[NR] }'
}

echo "baseline (no attack):"
legit 50 "$work/base.txt"; stats "$work/base.txt"

echo "attack: slowhttptest $MODE -c $CONNS -r 500 -i 5 -l $ATTACK_SECS against $URL (cap $CAP per IP)"
slowhttptest "$MODE" -c "$CONNS" -r 500 -i 5 -l "$ATTACK_SECS" -s 8192 -x 10 -p 3 \
    -u "$URL" >"$work/slow.log" 2>&1 &
attack=$!
pids+=($attack)
sleep 3 # let the attack reach its connection count
( while kill -0 "$attack" 2>/dev/null; do
    n=$(ss -Htn state established "( dport = :$RELAY_PORT )" src 127.0.0.1 | wc -l)
    echo "$n"; sleep 1
  done ) >"$work/open.txt" &
pids+=($!)
legit "$LEGIT" "$work/attack.txt"
echo "legit traffic during the attack:"
stats "$work/attack.txt"
echo "attack connections open while legit traffic ran: $(tr '\n' ' ' <"$work/open.txt")"
wait "$attack" || true
sleep 1
echo "attack connections open, per second over the whole attack: $(tr '\n' ' ' <"$work/open.txt")"
grep -E "closed|pending|connected|service available" "$work/slow.log" | tail -4 || true
echo "relay still healthy: $(curl -s --max-time 5 "http://127.0.0.1:$RELAY_PORT/_whtunnel/health")"
grep -vE "^\s*$" "$work/relay.log" | grep -iE "panic|error" | tail -5 || true
