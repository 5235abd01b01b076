#!/usr/bin/env python3
"""Latency of held-event answers (202) at a fixed request rate.

Sends RATE requests/s for SECONDS to a tunnel whose agent is away, on
keep-alive connections (several in parallel so a slow answer does not delay
the schedule), and prints p50/p90/p99/max of the time to a complete answer.
Loopback only; bounded by RATE*SECONDS requests and SECONDS + 10 s.

usage: held_latency.py URL [RATE] [SECONDS]
"""
import http.client
import json
import sys
import threading
import time
import urllib.parse

url = urllib.parse.urlsplit(sys.argv[1])
rate = float(sys.argv[2]) if len(sys.argv) > 2 else 100.0
seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
assert url.hostname in ("127.0.0.1", "localhost", "::1"), "loopback only"
total = int(rate * seconds)
workers = 16
body = json.dumps({"type": "payment.settled", "pad": "x" * 960}).encode()

lock = threading.Lock()
latencies, statuses = [], {}
start = time.monotonic() + 0.2
deadline = start + seconds + 10


def worker(k):
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    for i in range(k, total, workers):
        due = start + i / rate
        now = time.monotonic()
        if now > deadline:
            return
        if due > now:
            time.sleep(due - now)
        try:
            conn.request("POST", url.path + f"?n={i}", body, {"content-type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            status = resp.status
        except Exception:
            conn.close()
            conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
            status = "error"
        # Measured from when it was due: a late start counts against us.
        dt = time.monotonic() - due
        with lock:
            latencies.append(dt)
            statuses[status] = statuses.get(status, 0) + 1


threads = [threading.Thread(target=worker, args=(k,)) for k in range(workers)]
for t in threads:
    t.start()
for t in threads:
    t.join()
latencies.sort()


def pct(p):
    return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000


print(
    f"requests={len(latencies)} rate={rate:g}/s statuses={statuses} "
    f"p50={pct(50):.1f}ms p90={pct(90):.1f}ms p99={pct(99):.1f}ms max={latencies[-1]*1000:.1f}ms"
)
