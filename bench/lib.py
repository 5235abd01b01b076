#!/usr/bin/env python3
"""Helpers for bench/run.sh (standard library only).

  free-port                          print a free TCP port on 127.0.0.1
  rss PID                            print "VmRSS_KiB VmHWM_KiB" of PID
  cputime PID...                     print user+system CPU seconds of PIDs
  sample-rss OUT SECS PID...         sample VmRSS every 20 ms for at most SECS
                                     (or until OUT.stop exists); write peak KiB
                                     per pid to OUT as JSON
  reconnect-run LOG PIDFILE URL TIMEOUT CMD...
                                     start the relay (CMD) with stderr to LOG,
                                     write its pid to PIDFILE, then as below
  reconnect RELAY_LOG URL TIMEOUT    wait for the relay's "listening" line to
                                     appear in RELAY_LOG, then POST to URL every
                                     5 ms until a 200; print seconds from relay
                                     up to first 200
  nats-stream PORT STREAM            print "messages last_seq" of a JetStream
                                     stream (PORT: nats-server's client port)
  nats-varz PORT                     print "in_msgs out_msgs cpu_pct" of nats-server
  snapshot PORT MPORT STREAM PID...  print JSON {t, seq, in_msgs, cpu: [CPU s per PID]}
                                     (PORT client port, MPORT monitoring port) at
                                     one instant, for rates over a window
  wait-kv PORT STREAM N TIMEOUT [DONE_FILE]
                                     poll until STREAM holds N messages (keys),
                                     PORT the client port, or DONE_FILE says
                                     "holding" (the agents are done trying);
                                     print the seconds waited, or "timeout M"
  tunnel-urls DIR N COUNT SAMPLE SEED PREFIX RELAY...
                                     write DIR/own.txt and DIR/random.txt (the
                                     same COUNT random tunnels of N, through the
                                     tunnel's own relay i mod R, or a random one)
                                     and DIR/routable.txt (SAMPLE names, each
                                     through every relay); print how many of
                                     random.txt cross to another relay
  summarize RESULTS.jsonl EXTRA.json print the markdown report
"""

import json
import os
import socket
import statistics
import sys
import time
import urllib.error
import urllib.request


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    print(port)


def read_status(pid):
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def rss(pid):
    r, h = read_status(pid)
    print(r, h)


def cputime(pids):
    """Total user+system CPU seconds of the given processes (all threads)."""
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    print(f"{total / tck:.2f}")


def sample_rss(out, secs, pids):
    peak = {p: 0 for p in pids}
    deadline = time.monotonic() + float(secs)
    while time.monotonic() < deadline and not os.path.exists(out + ".stop"):
        for p in pids:
            r, _ = read_status(p)
            peak[p] = max(peak[p], r)
        time.sleep(0.02)
    with open(out, "w") as f:
        json.dump(peak, f)


def reconnect_run(relay_log, pid_file, url, timeout, cmd):
    """Starts the relay (cmd, stderr to relay_log) itself, so the clock starts
    before the relay can print its "listening" line (a poller started after
    the relay would see the line late by its own start-up time)."""
    import subprocess
    with open(relay_log, "w") as err:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=False)
    with open(pid_file, "w") as f:
        f.write(str(p.pid))
    reconnect(relay_log, url, timeout)


def reconnect(relay_log, url, timeout):
    deadline = time.monotonic() + float(timeout)
    while time.monotonic() < deadline:
        try:
            with open(relay_log) as f:
                if "listening on" in f.read():
                    break
        except OSError:
            pass
        time.sleep(0.001)
    else:
        print("nan")
        return
    t0 = time.monotonic()
    while time.monotonic() < deadline:
        req = urllib.request.Request(url, data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    print(f"{time.monotonic() - t0:.3f}")
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.005)
    print("nan")


# --------------------------------------------------------------------------
# Report

SYSTEM_NOTES = {
    "direct": "wrk straight to the target (baseline)",
    "whtunnel": "whtunnel relay + agent, --no-capture",
    "whtunnel-cap": "whtunnel relay + agent, capture store on (default)",
    "whtunnel-variant": "whtunnel relay + agent, --no-capture, with --variant / --variant-bin",
    "whtunnel-variant-cap": "whtunnel relay + agent, capture on, with --variant / --variant-bin",
    "bore": "bore-cli: TCP-level pipe, not HTTP-aware, records nothing",
    "rathole": "rathole: TCP-level pipe, not HTTP-aware, records nothing",
    "localtunnel": "localtunnel: HTTP-aware by Host header, records nothing",
}


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def fmt(x, nd=0):
    if x is None or x != x:
        return "n/a"
    return f"{x:,.{nd}f}"


def summarize(path, extra_path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    extra = json.load(open(extra_path)) if extra_path and os.path.exists(extra_path) else {}
    by = {}
    order_s, order_sys = [], []
    for r in rows:
        key = (r["scenario"], r["system"])
        by.setdefault(key, []).append(r)
        if r["scenario"] not in order_s:
            order_s.append(r["scenario"])
        if r["system"] not in order_sys:
            order_sys.append(r["system"])

    def agg(scen, system):
        rs = by.get((scen, system), [])
        if not rs:
            return None
        rps = [r["requests"] / (r["duration_us"] / 1e6) for r in rs]
        return {
            "n": len(rs),
            "rps": med(rps),
            "rps_all": rps,
            "p50": med([r["p50_us"] for r in rs]),
            "p99": med([r["p99_us"] for r in rs]),
            "errors": sum(r["err_connect"] + r["err_read"] + r["err_write"] + r["err_timeout"] for r in rs),
            "non2xx": sum(r["err_status"] for r in rs),
            "requests": sum(r["requests"] for r in rs),
            "recorded": sum(r.get("recorded", 0) for r in rs) if any("recorded" in r for r in rs) else None,
            "load": med([r.get("load1", float("nan")) for r in rs]),
            "cpu_tunnel": med([r["cpu_tunnel_s"] * 1e6 / r["requests"] for r in rs if r.get("requests") and "cpu_tunnel_s" in r]),
            "cpu_app": med([r["cpu_app_s"] * 1e6 / r["requests"] for r in rs if r.get("requests") and "cpu_app_s" in r]),
        }

    out = []
    out.append("| scenario | system | req/s (median) | × direct | p50 µs | p99 µs | tunnel CPU µs/req | app CPU µs/req | runs | non-2xx | socket errors | recorded / completed |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    table = {}
    for s in order_s:
        d = agg(s, "direct")
        for system in order_sys:
            a = agg(s, system)
            if not a:
                continue
            table[(s, system)] = a
            ratio = a["rps"] / d["rps"] if d and d["rps"] else float("nan")
            rec = "—"
            if a["recorded"] is not None:
                rec = f"{a['recorded']:,} / {a['requests']:,}"
            out.append(
                f"| {s} | {system} | {fmt(a['rps'])} | {fmt(ratio, 2)} | {fmt(a['p50'])} | {fmt(a['p99'])} | {'—' if system == 'direct' else fmt(a['cpu_tunnel'], 1)} | {fmt(a['cpu_app'], 1)} | {a['n']} | {a['non2xx']} | {a['errors']} | {rec} |"
            )

    # Targets from the issue, evaluated on this run.
    def ratio(s, a, b):
        x, y = table.get((s, a)), table.get((s, b))
        if not x or not y or not y["rps"]:
            return None
        return x["rps"] / y["rps"]

    def added_p50(s, system):
        x, d = table.get((s, system)), table.get((s, "direct"))
        if not x or not d:
            return None
        return x["p50"] - d["p50"]

    targets = []
    cap = "whtunnel-cap" if any(k[1] == "whtunnel-cap" for k in table) else None
    wt_tp = cap or "whtunnel"
    note = "" if cap else " (capture on unavailable in this build: measured with --no-capture)"

    def verdict(ok):
        return "n/a" if ok is None else ("MET" if ok else "NOT MET")

    r = ratio("1k-c32-keepalive", wt_tp, "bore")
    targets.append(("1 KiB c=32 keep-alive, capture on: throughput ≥ 1.0× bore" + note,
                    f"{fmt(r, 2)}× bore", verdict(None if r is None else r >= 1.0)))
    aw, ab = added_p50("1k-c1-keepalive", "whtunnel"), added_p50("1k-c1-keepalive", "bore")
    targets.append(("c=1 added p50 over direct ≤ bore's added p50",
                    f"whtunnel +{fmt(aw)} µs, bore +{fmt(ab)} µs",
                    verdict(None if aw is None or ab is None else aw <= ab)))
    r = ratio("1k-c32-close", "whtunnel", "rathole")
    targets.append(("1 KiB c=32 Connection: close: throughput ≥ 1.0× rathole",
                    f"{fmt(r, 2)}× rathole", verdict(None if r is None else r >= 1.0)))
    r = ratio("256k-c32-keepalive", wt_tp, "bore")
    t = table.get(("256k-c32-keepalive", wt_tp))
    rec_ok = None
    if cap and t and t["recorded"] is not None:
        rec_ok = t["recorded"] >= t["requests"]
    targets.append(("256 KiB c=32: throughput ≥ 1.0× bore" + note,
                    f"{fmt(r, 2)}× bore", verdict(None if r is None else r >= 1.0)))
    targets.append(("256 KiB c=32: every exchange recorded",
                    "n/a (capture unavailable)" if not cap else f"{t['recorded']:,} / {t['requests']:,}" if t else "n/a",
                    verdict(rec_ok)))
    rc = extra.get("reconnect_s")
    if rc:
        m = med(rc)
        targets.append(("reconnect ≤ 0.6 s after the relay is back",
                        f"median {m:.3f} s of {len(rc)} ({', '.join(f'{x:.3f}' for x in rc)})",
                        verdict(m <= 0.6)))
    mem = extra.get("memory", {})
    g = mem.get("growth_100mib_kib")
    if g is not None:
        targets.append(("100 MiB body grows relay+agent RSS ≤ 16 MiB",
                        f"{g / 1024:.1f} MiB", verdict(g <= 16 * 1024)))
    idle = extra.get("idle_agents", {})
    for n in sorted(idle, key=int):
        per = idle[n].get("relay_per_agent_kib")
        if per is not None:
            label = f"{int(n):,} idle agents at ≤ 64 KiB each (relay RSS)"
            if int(n) < 10000:
                label += " — proxy for the 10,000 target"
            targets.append((label,
                            f"{per:.1f} KiB/agent ({idle[n].get('connected')} connected)",
                            verdict(per <= 64)))

    out.append("")
    out.append("| target | measured | verdict |")
    out.append("|---|---|---|")
    for t_, m_, v_ in targets:
        out.append(f"| {t_} | {m_} | {v_} |")

    if mem:
        out.append("")
        out.append("| memory (KiB) | relay | agent |")
        out.append("|---|---:|---:|")
        for k in ["idle", "load_peak", "after_25mib_hwm", "after_100mib_hwm"]:
            if k in mem:
                out.append(f"| {k} | {fmt(mem[k].get('relay'))} | {fmt(mem[k].get('agent'))} |")
        for k in ["upload_25mib", "upload_100mib"]:
            if k in mem:
                out.append(f"| {k} | {mem[k]} | |")
    if idle:
        out.append("")
        out.append("| idle agents | connected | relay RSS before (KiB) | relay RSS with agents (KiB) | relay KiB/agent | client KiB/agent | relay CPU while idle |")
        out.append("|---:|---:|---:|---:|---:|---:|---:|")
        for n in sorted(idle, key=int):
            i = idle[n]
            out.append(
                f"| {int(n):,} | {i.get('connected')} | {fmt(i.get('relay_before_kib'))} | {fmt(i.get('relay_with_kib'))} | {fmt(i.get('relay_per_agent_kib'), 1)} | {fmt(i.get('client_per_agent_kib'), 1)} | {fmt(i.get('relay_idle_cpu_pct'), 1)} % |"
            )
    instr = extra.get("instructions")
    if instr:
        out.append("")
        out.append("| instructions per request (callgrind, 1 KiB POST) | relay | agent | relay + agent | the same without software SHA-256 |")
        out.append("|---|---:|---:|---:|---:|")
        per, native = {}, {}
        for r in instr:
            per.setdefault(r["mode"], {})[r["component"]] = r["instructions_per_request"]
            native.setdefault(r["mode"], {})[r["component"]] = r.get(
                "instructions_per_request_native_sha", r["instructions_per_request"])
        labels = {"no-capture": "no capture", "capture": "capture on",
                  "store-full": "capture on, store full (retention deleting)"}
        for mode, v in per.items():
            rl, ag = v.get("relay"), v.get("agent")
            tot = rl + ag if rl is not None and ag is not None else None
            n = native.get(mode, {})
            ntot = n["relay"] + n["agent"] if "relay" in n and "agent" in n else None
            out.append(f"| {labels.get(mode, mode)} | {fmt(rl)} | {fmt(ag)} | {fmt(tot)} | {fmt(ntot)} |")
        out.append("")
        out.append("Valgrind hides the CPU's SHA extensions, so under callgrind each body hash runs "
                   "in sha2's portable code (about 57 instructions a byte); the last column leaves it out.")
        full = per.get("store-full", {})
        if "relay" in full and "agent" in full:
            tot = full["relay"] + full["agent"]
            nf = native.get("store-full", {})
            ntot = nf.get("relay", full["relay"]) + nf.get("agent", full["agent"])
            out.append("")
            out.append(f"Target relay + agent ≤ 120k instructions per exchange, store full: {tot / 1000:.1f}k "
                       f"({ntot / 1000:.1f}k without software SHA-256) — {verdict(tot <= 120_000)}")
    c10 = extra.get("cluster10k")
    if c10:
        out.append("")
        if c10.get("relay_args"):
            out.append("")
            out.append(f"Cluster relays started with: `{c10['relay_args']}`")
            out.append("")
        out.append(f"Cluster: {c10['tunnels']:,} tunnels over {len(c10['relays'])} relays, "
                   f"{c10['connected']:,} connected in {fmt(c10['connect_s'], 2)} s "
                   f"({c10.get('connect_retries')} handshakes tried again) "
                   f"(all claimed in the KV after {fmt(c10['kv_all_claimed_s'], 2)} s); "
                   f"idle {c10['idle_window_s']} s: KV writes {fmt(c10['kv_writes_per_s'], 1)}/s, "
                   f"NATS messages in {fmt(c10['nats_msgs_in_per_s'], 1)}/s, out {fmt(c10.get('nats_msgs_out_per_s'), 1)}/s, "
                   f"held-stream consumers {c10.get('held_consumers')}, NATS CPU {fmt(c10['nats_idle_cpu_pct'], 1)} %, "
                   f"NATS RSS {fmt(c10.get('nats_rss_before_kib'))} -> {fmt(c10.get('nats_rss_with_kib'))} KiB, "
                   f"load1 {c10['load1_idle']}")
        out.append("")
        out.append("| relay | tunnels | RSS before (KiB) | RSS with tunnels (KiB) | KiB/tunnel | CPU while idle |")
        out.append("|---:|---:|---:|---:|---:|---:|")
        for i, r in enumerate(c10["relays"]):
            out.append(f"| {i} | {r['tunnels']:,} | {fmt(r['rss_before_kib'])} | {fmt(r['rss_with_kib'])} | "
                       f"{fmt(r['per_tunnel_kib'], 1)} | {fmt(r['idle_cpu_pct'], 1)} % |")
        out.append("")
        out.append(f"| webhook (c=1, {c10['probes_per_round']:,} random tunnels per round; "
                   f"{c10['random_crossed']:,} of them cross a hop in 'random') | round | p50 µs | p90 µs | p99 µs | max µs | 200s | other | load1 |")
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for p in c10["probes"]:
            other = sum(v for k, v in p.get("status", {}).items() if k != "200")
            out.append(f"| through {p['mode']} relay | {p['round']} | {fmt(p.get('p50_us'))} | {fmt(p.get('p90_us'))} | "
                       f"{fmt(p.get('p99_us'))} | {fmt(p.get('max_us'))} | {p.get('answered_200')} | {other} | {p['load1']} |")
        rt = c10["routable"]
        out.append("")
        out.append(f"Routable: {rt.get('answered_200')} of {rt.get('requests')} answered 200 "
                   f"({rt['names']} random names, each through every relay; statuses {json.dumps(rt.get('status'))})")
    print("\n".join(out))


def nats_json(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return json.load(r)


def nats_stream_state(port, stream):
    """The `state` of STREAM ({} when it does not exist yet), or None when
    JetStream did not answer within 10 s (it can be that busy).

    Asks JetStream itself ($JS.API.STREAM.INFO over the NATS client port,
    plain protocol): the monitoring port's /jsz answers from a cache that
    lags by seconds, too coarse to time claims or count writes.
    """
    try:
        with socket.create_connection(("127.0.0.1", int(port)), timeout=10) as s:
            f = s.makefile("rb")
            f.readline()  # INFO
            s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB _INBOX.bench 1\r\n'
                      + f"PUB $JS.API.STREAM.INFO.{stream} _INBOX.bench 0\r\n\r\nPING\r\n".encode())
            while True:
                line = f.readline()
                if not line or line.startswith(b"-ERR"):
                    return None
                if line.startswith(b"PING"):
                    s.sendall(b"PONG\r\n")
                elif line.startswith(b"MSG "):
                    size = int(line.split()[-1])
                    payload = f.read(size + 2)[:size]
                    return json.loads(payload).get("state", {})
    except (OSError, ValueError):
        return None


def nats_stream(port, stream):
    """(messages, last_seq) of STREAM; (0, 0) when absent, None when no answer."""
    state = nats_stream_state(port, stream)
    if state is None:
        return None
    return state.get("messages", 0), state.get("last_seq", 0)


def cpu_seconds(pid):
    tck = os.sysconf("SC_CLK_TCK")
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tck
    except OSError:
        return 0.0


def snapshot(port, mport, stream, pids):
    t = time.time()
    cpu = [cpu_seconds(p) for p in pids]
    state = nats_stream_state(port, stream) or {}
    varz = nats_json(mport, "/varz")
    held = nats_stream_state(port, "whtunnel_held") or {}
    print(json.dumps({"t": t, "seq": state.get("last_seq"), "in_msgs": varz.get("in_msgs", 0),
                      "out_msgs": varz.get("out_msgs", 0), "cpu": cpu,
                      "held_consumers": held.get("consumer_count")}))


def wait_kv(port, stream, n, timeout, done_file=None):
    """Waits for N keys; gives up at TIMEOUT or once DONE_FILE says
    `holding` (the agents stopped trying) and the count still falls short."""
    start = time.monotonic()
    msgs = 0
    while time.monotonic() - start < timeout:
        finished = False
        if done_file:
            try:
                finished = "holding" in open(done_file).read()
            except OSError:
                pass
        got = nats_stream(port, stream)
        msgs = got[0] if got else msgs
        if msgs >= n:
            print(f"{time.monotonic() - start:.2f}")
            return
        if finished:
            break
        time.sleep(0.2)
    print(f"timeout {msgs}")


def tunnel_urls(out, n, count, sample, seed, prefix, relays):
    import random
    rng = random.Random(seed)
    r = len(relays)
    picks = [rng.randrange(n) for _ in range(count)]
    crossed = 0
    with open(os.path.join(out, "own.txt"), "w") as own, open(os.path.join(out, "random.txt"), "w") as rnd:
        for i in picks:
            own.write(f"http://{relays[i % r]}/t/{prefix}-{i}\n")
            j = rng.randrange(r)
            crossed += j != i % r
            rnd.write(f"http://{relays[j]}/t/{prefix}-{i}\n")
    with open(os.path.join(out, "routable.txt"), "w") as f:
        for i in rng.sample(range(n), min(sample, n)):
            for relay in relays:
                f.write(f"http://{relay}/t/{prefix}-{i}\n")
    print(crossed)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "free-port":
        free_port()
    elif cmd == "rss":
        rss(args[0])
    elif cmd == "cputime":
        cputime(args)
    elif cmd == "sample-rss":
        sample_rss(args[0], args[1], args[2:])
    elif cmd == "reconnect":
        reconnect(*args)
    elif cmd == "reconnect-run":
        reconnect_run(args[0], args[1], args[2], args[3], args[4:])
    elif cmd == "nats-stream":
        print(*(nats_stream(args[0], args[1]) or ("none", "none")))
    elif cmd == "nats-varz":
        v = nats_json(args[0], "/varz")
        print(v.get("in_msgs", 0), v.get("out_msgs", 0), v.get("cpu", 0))
    elif cmd == "snapshot":
        snapshot(args[0], args[1], args[2], args[3:])
    elif cmd == "wait-kv":
        wait_kv(args[0], args[1], int(args[2]), float(args[3]), args[4] if len(args) > 4 else None)
    elif cmd == "tunnel-urls":
        tunnel_urls(args[0], int(args[1]), int(args[2]), int(args[3]), int(args[4]), args[5], args[6:])
    elif cmd == "summarize":
        summarize(args[0], args[1] if len(args) > 1 else None)
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
