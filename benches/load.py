#!/usr/bin/env python3
"""End-to-end load benchmark: Envoy's CPU time per request with and without meshguard.

Starts one Envoy per configuration (each `--concurrency 1`, pinned to CPU 0), all answering a
direct response on the cheapest path (HTTP/1.1 keep-alive, no upstream, no access log), and drives
them with wrk from a second process pinned to CPU 1. Configurations are alternated round by round
so that drift of the machine hits all of them alike; the table reports medians over rounds.

CPU per request comes from /proc/<pid>/stat (utime + stime of the whole Envoy process) over each
wrk run, divided by the requests wrk completed. Ratios are against Envoy without any filter.

Run it with `scripts/bench.sh` (builds the wasm files and installs wrk first), or directly:
    python3 benches/load.py --rounds 5 --duration 5
"""

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import procstat

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESHGUARD_WASM = os.path.join(REPO, "target/wasm32-wasip1/release/meshguard.wasm")
EMPTY_WASM = os.path.join(REPO, "benches/empty-filter/target/wasm32-wasip1/release/empty_filter.wasm")

LUA = r"""
function envoy_on_request(handle)
  local h = handle:headers()
  local c = h:get("x-correlation-id")
  local t = h:get("traceparent")
  local s = h:get("tracestate")
  local r = h:get("x-request-id")
  local p = h:get(":path")
  h:replace("x-correlation-id", c or "5d0c6f6e-8f0e-4b2c-9a51-3c2f4f0a1b7d")
  h:replace("traceparent", t or "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
  h:replace("x-bench-path-seen", p or "-")
end
"""


def wasm_filter(name, path, config):
    return {
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": name,
                "vm_config": {"vm_id": name, "runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": path}}},
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config},
            },
        },
    }


def lua_filter():
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": LUA},
        },
    }


# name -> (description, filters before the router)
CONFIGS = {
    "envoy": ("Envoy, no filter", []),
    "empty-wasm": ("empty Rust proxy-wasm filter", [wasm_filter("empty", EMPTY_WASM, "")]),
    "lua": ("Lua filter: read 5 headers, write 3", [lua_filter()]),
    "trace+corr": ("meshguard, default config (trace + correlation)", [wasm_filter("meshguard", MESHGUARD_WASM, "{}")]),
    "rules": (
        "meshguard, 3 rules matched on path/host/route name",
        [
            wasm_filter(
                "meshguard",
                MESHGUARD_WASM,
                json.dumps(
                    {
                        "routes": [
                            {"name": "health", "match": {"prefix": "/healthz"}},
                            {"name": "orders", "match": {"host": "orders.prod", "methods": ["POST"]}},
                            {"name": "bench", "match": {"route_name": "bench"}},
                        ]
                    }
                ),
            )
        ],
    ),
    "breaker-closed": (
        "meshguard, trace + correlation + circuit breaker (closed, success path)",
        [wasm_filter("meshguard", MESHGUARD_WASM, '{"circuit_breaker": {}}')],
    ),
    "breaker-open": (
        "meshguard, open circuit: every request answered locally (forced_open)",
        [wasm_filter("meshguard", MESHGUARD_WASM, '{"circuit_breaker": {"mode": "forced_open"}}')],
    ),
    "all-features": (
        "meshguard, all four features: breaker closed, dedup on a first-seen key (POST, unique x-event-id)",
        [wasm_filter("meshguard", MESHGUARD_WASM, '{"circuit_breaker": {}, "dedup": {}}')],
    ),
    "dedup-replay": (
        "meshguard, dedup answering a duplicate locally (POST, the same x-event-id every time)",
        [wasm_filter("meshguard", MESHGUARD_WASM, '{"dedup": {}}')],
    ),
    "log-line": (
        "meshguard + one JSON log line per request",
        [wasm_filter("meshguard", MESHGUARD_WASM, '{"log": {"requests": true}}')],
    ),
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bootstrap(port, admin, filters):
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "bench",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                                        "stat_prefix": "bench",
                                        "route_config": {
                                            "virtual_hosts": [
                                                {
                                                    "name": "bench",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {
                                                            "name": "bench",
                                                            "match": {"prefix": "/"},
                                                            "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
                                                        }
                                                    ],
                                                }
                                            ]
                                        },
                                        "http_filters": filters + [router],
                                    },
                                }
                            ]
                        }
                    ],
                }
            ]
        },
    }


class Envoy:
    def __init__(self, name, filters, workdir):
        self.name = name
        self.port, self.admin = free_port(), free_port()
        path = os.path.join(workdir, f"{name}.json")
        with open(path, "w") as f:
            json.dump(bootstrap(self.port, self.admin, filters), f)
        self.log = open(os.path.join(workdir, f"{name}.log"), "w")
        cmd = ["envoy", "-c", path, "--concurrency", "1", "--use-dynamic-base-id", "--log-level", "warn"]
        if shutil.which("taskset"):
            cmd = ["taskset", "-c", "0"] + cmd
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"{name}: Envoy exited; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/ready", timeout=1) as r:
                    if r.read().strip() == b"LIVE":
                        return
            except OSError:
                pass
            time.sleep(0.05)
        sys.exit(f"{name}: Envoy not ready after 60 s")

    def cpu_seconds(self):
        return procstat.cpu_seconds(self.proc.pid)

    def rss_mb(self):
        return procstat.rss_mb(self.proc.pid)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def parse_latency(text):
    match = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if not match:
        sys.exit(f"cannot read wrk latency {text!r}")
    value, unit = match.groups()
    return float(value) * {"us": 1, "ms": 1e3, "s": 1e6, "m": 60e6}[unit]


# Configurations whose every answer is meshguard's local reply (an error status by design).
LOCAL_REPLIES = {"breaker-open"}

# wrk scripts for the configurations that need POSTs with event ids (others send GET /).
WRK_SCRIPTS = {
    "all-features": """
local prefix = tostring(os.time()) .. "-" .. tostring(math.random(1000000))
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/", {["x-event-id"] = prefix .. "-" .. n}, "")
end
""",
    "dedup-replay": """
request = function()
  return wrk.format("POST", "/", {["x-event-id"] = "the-same-event"}, "")
end
""",
}
SCRIPT_DIR = tempfile.mkdtemp(prefix="meshguard-wrk-")


def wrk(port, duration, connections, local_replies=False, name=None):
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", f"http://127.0.0.1:{port}/"]
    # A variant named after a scripted configuration (e.g. all-features-b) uses its script.
    script = next((k for k in WRK_SCRIPTS if name and name.startswith(k)), None)
    if script:
        path = os.path.join(SCRIPT_DIR, f"{script}.lua")
        with open(path, "w") as f:
            f.write(WRK_SCRIPTS[script])
        cmd[1:1] = ["-s", path]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "1"] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = parse_latency(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = parse_latency(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if local_replies:
        if not errors or int(errors.group(1)) != requests:
            sys.exit(f"expected only local replies on port {port}:\n{out}")
    elif errors:
        sys.exit(f"wrk saw {errors.group(1)} error responses on port {port}:\n{out}")
    return requests, rps, p50, p99


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5, help="seconds of load per configuration and round")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--only", nargs="*", help="configuration names to run (default: all)")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=WASM[:CONFIG]",
        help="an extra configuration running another build (A/B of a change), with CONFIG or {}; "
        "WASM 'none' is Envoy alone, 'empty' the empty filter. A NAME starting with a scripted "
        "configuration's name (all-features, dedup-replay) sends that configuration's requests",
    )
    args = ap.parse_args()
    for variant in args.variant:
        name, _, rest = variant.partition("=")
        path, _, config = rest.partition(":")
        if path == "none":  # Envoy alone, e.g. under another configuration's wrk script
            CONFIGS[name] = ("Envoy, no filter", [])
        elif path == "empty":
            CONFIGS[name] = ("empty Rust proxy-wasm filter", [wasm_filter("empty", EMPTY_WASM, "")])
        else:
            CONFIGS[name] = (f"variant {os.path.basename(path)}", [wasm_filter("meshguard", os.path.abspath(path), config or "{}")])
        if args.only is not None:
            args.only.append(name)

    for path in (MESHGUARD_WASM, EMPTY_WASM):
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: run scripts/bench.sh (it builds it)")
    names = args.only or list(CONFIGS)
    workdir = tempfile.mkdtemp(prefix="meshguard-bench-")
    envoys = {}
    try:
        for name in names:
            envoys[name] = Envoy(name, CONFIGS[name][1], workdir)
        for name, e in envoys.items():  # warm-up: JIT, connection pools, allocator
            wrk(e.port, 2, args.connections, name in LOCAL_REPLIES, name)
        samples = {name: [] for name in names}
        for r in range(args.rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                e = envoys[name]
                before = e.cpu_seconds()
                requests, rps, p50, p99 = wrk(e.port, args.duration, args.connections, name in LOCAL_REPLIES, name)
                if requests == 0 or e.proc.poll() is not None:
                    sys.exit(f"{name}: no requests completed (Envoy {'exited' if e.proc.poll() is not None else 'stalled'}); see {e.log.name}")
                cpu_us = (e.cpu_seconds() - before) * 1e6 / requests
                samples[name].append({"cpu_us": cpu_us, "rps": rps, "p50_us": p50, "p99_us": p99})
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
        rss = {name: envoys[name].rss_mb() for name in names}
    finally:
        for e in envoys.values():
            e.stop()

    def med(name, key):
        return statistics.median(s[key] for s in samples[name])

    base = "envoy" if "envoy" in names else names[0]
    print(f"\n{args.rounds} rounds x {args.duration} s per configuration, wrk -t1 -c{args.connections}, "
          f"Envoy --concurrency 1; medians; ratios to '{base}'\n")
    print("| configuration | CPU µs/req | CPU ratio | req/s | p50 µs | p99 µs | p50 ratio | p99 ratio | RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in names:
        print(
            f"| {name}: {CONFIGS[name][0]} | {med(name, 'cpu_us'):.1f} | {med(name, 'cpu_us') / med(base, 'cpu_us'):.2f} "
            f"| {med(name, 'rps'):.0f} | {med(name, 'p50_us'):.0f} | {med(name, 'p99_us'):.0f} "
            f"| {med(name, 'p50_us') / med(base, 'p50_us'):.2f} | {med(name, 'p99_us') / med(base, 'p99_us'):.2f} "
            f"| {rss[name]:.1f} |"
        )
    print(f"\nmeshguard.wasm: {os.path.getsize(MESHGUARD_WASM)} bytes; empty filter: {os.path.getsize(EMPTY_WASM)} bytes")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"samples": samples, "rss_mb": rss, "args": vars(args)}, f, indent=2)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
