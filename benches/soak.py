#!/usr/bin/env python3
"""Soak: a bounded run of mixed traffic through a real Envoy running meshguard with all four
features on, against an upstream that flaps, checking that Envoy's memory stays flat and that no
error counter moves. Exits non-zero when a check fails. (docs/soak.md has the measured figures.)

Traffic (wrk, one thread per core, a Lua script): 50% POST /events with a fresh x-event-id (dedup
first-seen), 10% POST /events repeating a recent id (duplicates), 25% GET /api with a valid
traceparent, 15% GET /api without one. The flapping upstream (a second process) cycles through
phases: healthy, 5xx, healthy, slow (past slow_call_duration), healthy, down (connections
refused), so the circuits of both rules open, half-open and close again, repeatedly.

The dedup store is small (--max-entries, default 4096) so that it fills within seconds and then
evicts for the rest of the run. Envoy's RSS (/proc/<pid>/status VmRSS) is sampled every
--sample seconds together with meshguard's stats. Checks:

* RSS after warm-up (the first quarter of the run, at least 15 s) grows by at most the bound:
  2 x the dedup store's bytes bound (docs/behaviour.md: 47 bytes per slot, 3 slots per entry, + 200 per bucket of 16) + 4 MiB of
  allocator and Envoy slack (--slack-mb);
* meshguard_errors_total stays 0, no VM failure line in Envoy's log, wasm.meshguard.vm_reload 0;
* meshguard_dedup_entries never exceeds the store's capacity (max_entries and its headroom:
  src/dedup/store.rs HEADROOM slots per entry), and evictions happened (the store filled);
* circuit transitions to open, half_open and closed all happened (the flapping worked);
* no invalid-input counters moved (the client sends only valid ids and traceparents), no
  downstream protocol errors, and wrk saw no socket errors other than timeouts.

Run with `scripts/soak.sh` (installs wrk, builds meshguard.wasm), e.g.
    scripts/soak.sh --duration 600        # the long run
    scripts/soak.sh --duration 60         # the short mode CI runs
"""

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from procstat import rss_mb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESHGUARD_WASM = os.environ.get("MESHGUARD_WASM", os.path.join(REPO, "target/wasm32-wasip1/release/meshguard.wasm"))

# (phase, seconds): one cycle of the flapping upstream; it repeats for the whole run.
CYCLE = [("healthy", 14), ("5xx", 6), ("healthy", 8), ("slow", 6), ("healthy", 8), ("down", 6)]
SLOW_MS = 300

ENTRY_BYTES = 47  # src/dedup/store.rs ENTRY_BYTES
PER_BUCKET = 16  # src/dedup/store.rs PER_BUCKET
HEADROOM = 3  # src/dedup/store.rs HEADROOM


def store_capacity(max_entries):
    """src/dedup/store.rs Layout::capacity."""
    slots = max(max_entries, 1) * HEADROOM
    per_bucket = min(PER_BUCKET, slots)
    return -(-slots // per_bucket) * per_bucket


def store_bytes_bound(max_entries):
    """src/dedup/store.rs Layout::bytes_bound."""
    slots = max(max_entries, 1) * HEADROOM
    per_bucket = min(PER_BUCKET, slots)
    buckets = -(-slots // per_bucket)
    return buckets * (2 * (2 + per_bucket * ENTRY_BYTES) + 200)


def plugin_config(max_entries):
    return {
        "circuit_breaker": {
            "window": {"type": "count", "size": 50},
            "minimum_calls": 20,
            "failure_rate_threshold": 50,
            "slow_call_duration": "200ms",
            "slow_call_rate_threshold": 80,
            "open_duration": "1s",
            "max_open_duration": "4s",
            "half_open_calls": 3,
        },
        "routes": [
            {
                "name": "events",
                "match": {"prefix": "/events", "methods": ["POST"]},
                "dedup": {"max_entries": max_entries, "ttl": "10m", "in_flight_ttl": "5s"},
            },
            {"name": "api", "match": {"prefix": "/api"}},
        ],
    }


# ---- the flapping upstream (run as a separate process: `soak.py --serve-upstream PORT`) -------


async def serve_upstream(port):
    state = {"phase": "healthy", "server": None, "writers": set()}

    async def handle(reader, writer):
        state["writers"].add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                phase = state["phase"]
                if phase == "down":
                    break
                if phase == "slow":
                    await asyncio.sleep(SLOW_MS / 1000)
                status = b"500 Internal Server Error" if phase == "5xx" else b"200 OK"
                body = b'{"ok":true}' if status.startswith(b"200") else b'{"ok":false}'
                writer.write(
                    b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
                    + str(len(body)).encode() + b"\r\n\r\n" + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            state["writers"].discard(writer)
            writer.close()

    async def listen():
        state["server"] = await asyncio.start_server(handle, "127.0.0.1", port, reuse_address=True, backlog=1024)

    await listen()
    print("upstream ready", flush=True)
    while True:
        for phase, seconds in CYCLE:
            if phase == "down":
                state["server"].close()
                for w in list(state["writers"]):
                    w.close()
            state["phase"] = phase
            print(f"{time.time():.3f} phase {phase}", flush=True)
            await asyncio.sleep(seconds)
            if phase == "down":
                await listen()


# ---- Envoy -------------------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bootstrap(port, admin, upstream_port, config):
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "route_config": {
            "name": "local",
            "virtual_hosts": [
                {
                    "name": "soak",
                    "domains": ["*"],
                    "routes": [{"name": "default", "match": {"prefix": "/"}, "route": {"cluster": "flaky", "timeout": "2s"}}],
                }
            ],
        },
        "http_filters": [
            {
                "name": "meshguard",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "name": "meshguard",
                        "root_id": "meshguard",
                        "failure_policy": "FAIL_RELOAD",
                        "vm_config": {
                            "vm_id": "meshguard",
                            "runtime": "envoy.wasm.runtime.v8",
                            "code": {"local": {"filename": MESHGUARD_WASM}},
                        },
                        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": json.dumps(config)},
                    },
                },
            },
            {"name": "envoy.filters.http.router", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "stats_config": {
            "stats_tags": [
                {"tag_name": "rule", "regex": "(rule=\\.=(.+?);\\.;)"},
                {"tag_name": "to", "regex": "(to=\\.=(.+?);\\.;)"},
                {"tag_name": "outcome", "regex": "(outcome=\\.=(.+?);\\.;)"},
            ]
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
                }
            ],
            "clusters": [
                {
                    "name": "flaky",
                    "type": "STATIC",
                    "connect_timeout": "0.5s",
                    "load_assignment": {
                        "cluster_name": "flaky",
                        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": upstream_port}}}}]}],
                    },
                }
            ],
        },
    }


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def prometheus(admin):
    """{'name{labels}': value} of the meshguard samples and the Envoy ones the checks need."""
    out = {}
    for line in http_get(f"http://127.0.0.1:{admin}/stats/prometheus").splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


def total(stats, prefix, **labels):
    """Sum of the samples of metric `prefix` whose labels include `labels`."""
    s = 0.0
    for name, value in stats.items():
        if not (name == prefix or name.startswith(prefix + "{")):
            continue
        if all(f'{k}="{v}"' in name for k, v in labels.items()):
            s += value
    return s


WRK_SCRIPT = r"""
-- Mixed meshguard soak traffic; prints one JSON line "SOAK_WRK {...}" when done.
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

local counter, recent = 0, {}
statuses = {} -- global: done() reads it with thread:get
local nonce = tostring(os.time())
function init(args)
  math.randomseed(os.time() * 1000 + tid)
end

local function hex(n)
  local t = {}
  for i = 1, n do t[i] = string.format("%x", math.random(0, 15)) end
  t[1] = string.format("%x", math.random(1, 15)) -- never all zeros
  return table.concat(t)
end

function request()
  counter = counter + 1
  local r = counter % 20
  if r < 10 then
    local id = "soak-" .. nonce .. "-" .. tid .. "-" .. counter
    recent[counter % 256] = id
    return wrk.format("POST", "/events/order", {["x-event-id"] = id, ["content-type"] = "application/json"}, "{}")
  elseif r < 12 then
    local id = recent[math.random(0, 255)] or ("soak-" .. nonce .. "-dup")
    return wrk.format("POST", "/events/order", {["x-event-id"] = id, ["content-type"] = "application/json"}, "{}")
  elseif r < 17 then
    return wrk.format("GET", "/api/items", {["traceparent"] = "00-" .. hex(32) .. "-" .. hex(16) .. "-01"})
  else
    return wrk.format("GET", "/api/items")
  end
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local all = {}
  for _, t in ipairs(threads) do
    local s = t:get("statuses")
    for code, n in pairs(s) do all[tostring(code)] = (all[tostring(code)] or 0) + n end
  end
  local parts = {}
  for code, n in pairs(all) do table.insert(parts, string.format('"%s":%d', code, n)) end
  local e = summary.errors
  io.write(string.format(
    'SOAK_WRK {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"statuses":{%s}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), table.concat(parts, ",")))
end
"""

CRASH = re.compile(r"panic|wasm vm failed|runtime error|unreachable", re.IGNORECASE)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=180, help="seconds of traffic (default 180)")
    p.add_argument("--sample", type=float, default=2.0, help="seconds between RSS/stat samples")
    p.add_argument("--max-entries", type=int, default=4096, help="dedup max_entries (small: the store fills)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections")
    p.add_argument("--slack-mb", type=float, default=4.0, help="allowed RSS growth after warm-up besides the store")
    p.add_argument("--concurrency", type=int, default=2, help="Envoy worker threads")
    p.add_argument("--samples-out", help="write the samples as JSON lines to this file")
    p.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.serve_upstream:
        asyncio.run(serve_upstream(args.serve_upstream))
        return 0
    for tool in ("envoy", "wrk"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (scripts/soak.sh installs both)")
    if not os.path.exists(MESHGUARD_WASM):
        sys.exit(f"{MESHGUARD_WASM} missing: cargo build --release --target wasm32-wasip1")

    work = tempfile.mkdtemp(prefix="meshguard-soak-")
    port, admin, upstream_port = free_port(), free_port(), free_port()
    config = plugin_config(args.max_entries)
    with open(os.path.join(work, "envoy.json"), "w") as f:
        json.dump(bootstrap(port, admin, upstream_port, config), f)
    with open(os.path.join(work, "wrk.lua"), "w") as f:
        f.write(WRK_SCRIPT)

    procs = []

    def stop_all():
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    try:
        upstream_log = open(os.path.join(work, "upstream.log"), "w")
        upstream = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--serve-upstream", str(upstream_port)],
            stdout=upstream_log,
            stderr=subprocess.STDOUT,
        )
        procs.append(upstream)
        envoy_log_path = os.path.join(work, "envoy.log")
        envoy_log = open(envoy_log_path, "w")
        envoy = subprocess.Popen(
            ["envoy", "-c", os.path.join(work, "envoy.json"), "--concurrency", str(args.concurrency),
             "--use-dynamic-base-id", "--log-format", "[%Y-%m-%d %T.%e][%t][%l][%n] %v"],
            stdout=envoy_log,
            stderr=subprocess.STDOUT,
        )
        procs.append(envoy)
        deadline = time.time() + 60
        while True:
            if envoy.poll() is not None:
                sys.exit(f"Envoy exited:\n{open(envoy_log_path).read()[-3000:]}")
            try:
                if http_get(f"http://127.0.0.1:{admin}/ready", 1).strip() == "LIVE":
                    break
            except OSError:
                pass
            if time.time() > deadline:
                sys.exit("Envoy not ready after 60 s")
            time.sleep(0.1)

        bound_store = store_bytes_bound(args.max_entries)
        bound_mb = 2 * bound_store / 2**20 + args.slack_mb
        warmup = max(15.0, args.duration / 4)
        print(f"soak: {args.duration} s, Envoy --concurrency {args.concurrency} (pid {envoy.pid}), wrk -c{args.connections}, "
              f"dedup max_entries {args.max_entries} (store bound {bound_store / 1024:.0f} KiB), warm-up {warmup:.0f} s, "
              f"RSS growth bound {bound_mb:.1f} MB; files in {work}", flush=True)
        start_rss = rss_mb(envoy.pid)

        threads = max(os.cpu_count() or 1, 1)
        wrk_out = open(os.path.join(work, "wrk.out"), "w")
        wrk = subprocess.Popen(
            ["wrk", f"-t{threads}", f"-c{args.connections}", f"-d{args.duration}s", "--timeout", "3s",
             "-s", os.path.join(work, "wrk.lua"), f"http://127.0.0.1:{port}/"],
            stdout=wrk_out,
            stderr=subprocess.STDOUT,
        )
        procs.append(wrk)
        t0 = time.time()
        samples = []
        next_sample = t0
        while wrk.poll() is None:
            now = time.time()
            if now >= next_sample:
                stats = prometheus(admin)
                sample = {
                    "t": round(now - t0, 1),
                    "rss_mb": round(rss_mb(envoy.pid), 2),
                    "requests": total(stats, "meshguard_requests_total"),
                    "entries": total(stats, "meshguard_dedup_entries"),
                    "evictions": total(stats, "meshguard_dedup_evictions_total"),
                    "open": total(stats, "meshguard_circuit_transitions_total", to="open"),
                    "errors": total(stats, "meshguard_errors_total"),
                }
                samples.append(sample)
                print("  t={t:>6.1f}s rss={rss_mb:7.2f} MB requests={requests:>9.0f} entries={entries:>6.0f} "
                      "evictions={evictions:>9.0f} opened={open:>4.0f} errors={errors:.0f}".format(**sample), flush=True)
                next_sample += args.sample
            time.sleep(min(0.2, max(0.0, next_sample - time.time())))
        wrk_out.close()
        end_rss = rss_mb(envoy.pid)
        final = prometheus(admin)
        envoy_text = http_get(f"http://127.0.0.1:{admin}/stats")
    finally:
        stop_all()

    out = open(os.path.join(work, "wrk.out")).read()
    m = re.search(r"SOAK_WRK (\{.*\})", out)
    if not m:
        print(out)
        sys.exit("wrk printed no result")
    w = json.loads(m.group(1))
    log = open(envoy_log_path, errors="replace").read()
    crash_lines = [l for l in log.splitlines() if CRASH.search(l)]
    transition_lines = [l for l in log.splitlines() if "meshguard: circuit " in l]

    def envoy_stat(name):
        m = re.search(rf"^{re.escape(name)}: (\d+)$", envoy_text, re.MULTILINE)
        return int(m.group(1)) if m else None

    after = [s for s in samples if s["t"] >= warmup]
    warm_rss = after[0]["rss_mb"] if after else float("nan")
    max_after = max((s["rss_mb"] for s in after), default=float("nan"))
    growth = max_after - warm_rss
    # Least-squares slope of RSS over the post-warm-up samples, MB per minute (informative).
    slope = 0.0
    if len(after) >= 3:
        xs = [s["t"] for s in after]
        ys = [s["rss_mb"] for s in after]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        den = sum((x - mx) ** 2 for x in xs)
        slope = 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0
    max_entries_seen = max((s["entries"] for s in samples), default=0.0)
    if args.samples_out:
        with open(args.samples_out, "w") as f:
            for s in samples:
                f.write(json.dumps(s) + "\n")

    def dedup(outcome):
        return total(final, "meshguard_dedup_total", outcome=outcome)

    trans = {to: total(final, "meshguard_circuit_transitions_total", to=to) for to in ("open", "half_open", "closed")}
    checks = [
        (f"RSS growth after warm-up ≤ {bound_mb:.1f} MB", growth <= bound_mb, f"{growth:+.2f} MB"),
        ("meshguard_errors_total = 0", total(final, "meshguard_errors_total") == 0, f"{total(final, 'meshguard_errors_total'):.0f}"),
        ("no VM failure in Envoy's log", not crash_lines, f"{len(crash_lines)} lines"),
        ("wasm.meshguard.vm_reload = 0", envoy_stat("wasm.meshguard.vm_reload") == 0, str(envoy_stat("wasm.meshguard.vm_reload"))),
        (f"meshguard_dedup_entries ≤ {store_capacity(args.max_entries)}, the store's capacity (every sample)",
         0 < max_entries_seen <= store_capacity(args.max_entries), f"max {max_entries_seen:.0f}"),
        ("dedup store evicted (it filled)", total(final, "meshguard_dedup_evictions_total") > 0, f"{total(final, 'meshguard_dedup_evictions_total'):.0f}"),
        ("duplicates answered", dedup("duplicate") > 0, f"{dedup('duplicate'):.0f}"),
        ("circuits opened, half-opened and closed", all(v > 0 for v in trans.values()),
         " / ".join(f"{k} {v:.0f}" for k, v in trans.items())),
        ("one log line per transition", len(transition_lines) == sum(trans.values()),
         f"{len(transition_lines)} lines, {sum(trans.values()):.0f} counted"),
        ("no invalid ids, fingerprints or traceparents counted",
         dedup("invalid") + dedup("mismatch") + total(final, "meshguard_trace_total", outcome="restarted_invalid")
         + total(final, "meshguard_correlation_total", outcome="replaced_invalid") == 0, "0 expected"),
        ("no downstream protocol errors", envoy_stat("http.ingress.downstream_cx_protocol_error") in (0, None),
         str(envoy_stat("http.ingress.downstream_cx_protocol_error"))),
        ("wrk: no connect/read/write errors", w["connect"] + w["read"] + w["write"] == 0,
         f"connect {w['connect']}, read {w['read']}, write {w['write']}, timeout {w['timeout']}"),
    ]

    print()
    print("| measure | value |")
    print("|---|---|")
    rows = [
        ("duration (s)", f"{w['duration_us'] / 1e6:.0f}"),
        ("requests (wrk)", f"{w['requests']} ({w['requests'] / (w['duration_us'] / 1e6):.0f}/s)"),
        ("responses by status", ", ".join(f"{k}: {v}" for k, v in sorted(w["statuses"].items()))),
        ("latency p50 / p99 (ms)", f"{w['p50_us'] / 1000:.1f} / {w['p99_us'] / 1000:.1f}"),
        ("dedup first / duplicate / in_flight / released", " / ".join(f"{dedup(o):.0f}" for o in ("first", "duplicate", "in_flight", "released"))),
        ("dedup evictions", f"{total(final, 'meshguard_dedup_evictions_total'):.0f}"),
        ("dedup entries (max sample / end)", f"{max_entries_seen:.0f} / {total(final, 'meshguard_dedup_entries'):.0f} (max_entries {args.max_entries}, capacity {store_capacity(args.max_entries)})"),
        ("circuit transitions open / half_open / closed", " / ".join(f"{v:.0f}" for v in trans.values())),
        ("circuit rejected", f"{total(final, 'meshguard_circuit_rejected_total'):.0f}"),
        ("trace propagated / started", f"{total(final, 'meshguard_trace_total', outcome='propagated'):.0f} / {total(final, 'meshguard_trace_total', outcome='started'):.0f}"),
        ("RSS start / after warm-up / max after / end (MB)", f"{start_rss:.1f} / {warm_rss:.1f} / {max_after:.1f} / {end_rss:.1f}"),
        ("RSS slope after warm-up (MB/min)", f"{slope:+.3f}"),
    ]
    for k, v in rows:
        print(f"| {k} | {v} |")
    print()
    failed = 0
    for name, ok, value in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}: {value}")
        failed += not ok
    if crash_lines:
        print("\n".join(crash_lines[:10]))
    if failed:
        print(f"\nsoak: {failed} check(s) failed; Envoy log and wrk output in {work}")
        return 1
    shutil.rmtree(work, ignore_errors=True)
    print("\nsoak: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
