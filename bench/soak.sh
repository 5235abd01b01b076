#!/usr/bin/env bash
# The fault-injection soak (tests/soak.rs), run long in a release build.
#
#   bench/soak.sh --minutes 30            # 30 minutes of load and faults
#   bench/soak.sh --minutes 5 --seed 42   # replay seed 42's fault schedule
#
# Options:
#   --minutes N     minutes of load (default 10); faults run throughout,
#                   then everything must drain within --drain seconds
#   --seed S        replay a seed (printed at the start of every run)
#   --drain S       seconds allowed after the last fault (default 30)
#   --rate LO-HI    each sender's rate in requests per second (default 30-90)
#   --dups N        duplicates allowed per crash (default: the drain's 16 in
#                   flight plus what both senders send at the top rate
#                   within 25 ms, 21 at 30-90)
#
# Loopback only; relay and agent are child processes of the test, killed
# when it ends however it ends. The summary (events, faults of each kind,
# duplicates, slowest drain) is printed at the end; on failure the logs and
# stores are kept and their directory printed.
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=10
DRAIN=30
RATE=30-90
DUPS=""
SEED=""
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) MINUTES=$2; shift 2 ;;
        --seed) SEED=$2; shift 2 ;;
        --drain) DRAIN=$2; shift 2 ;;
        --rate) RATE=$2; shift 2 ;;
        --dups) DUPS=$2; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "bench/soak.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
    esac
done
case "$MINUTES" in ''|*[!0-9]*) echo "bench/soak.sh: --minutes takes a whole number" >&2; exit 2 ;; esac

export WHTUNNEL_SOAK_SECS=$((MINUTES * 60))
export WHTUNNEL_SOAK_DRAIN_SECS=$DRAIN
export WHTUNNEL_SOAK_RATE=$RATE
if [ -n "$DUPS" ]; then export WHTUNNEL_SOAK_DUPS_PER_CRASH=$DUPS; fi
if [ -n "$SEED" ]; then export WHTUNNEL_SOAK_SEED=$SEED; fi
exec cargo test --release --locked --test soak -- --nocapture
