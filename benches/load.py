#!/usr/bin/env python3
"""End-to-end load benchmark: Envoy's CPU time per request with and without meshguard, beside
peers that do similar work natively (docs/performance.md describes every row).

Starts one Envoy per configuration (each `--concurrency 1`, pinned to CPU 0), all answering a
direct response on the cheapest path (keep-alive, no upstream, no access log), and drives them
from a second process pinned to CPU 1: wrk over HTTP/1.1, h2load over HTTP/2 (prior-knowledge
h2c against the same listener) for the `h2:` rows. Rows are alternated round by round so that
drift of the machine hits all of them alike; the table reports medians over rounds.

CPU per request comes from /proc/<pid>/stat (utime + stime of the whole Envoy process) over each
run, divided by the requests the client completed. Ratios are against Envoy without any filter
over the same protocol. After the rounds, every row that runs a proxy-wasm filter serves a fixed
number of requests with Envoy's wasm trace log switched on (admin `/logging?wasm=trace`), and
benches/wasmtrace.py counts the host calls and VM entries per request from those lines.

Output: a markdown report (machine, command, the table, the calls by name, notes) on stdout.

Run it with `scripts/bench.sh` (builds the wasm files and installs wrk and h2load first), or:
    python3 benches/load.py --rounds 5 --duration 5
    python3 benches/load.py --only envoy trace+corr h2:envoy h2:trace+corr --rounds 2 --duration 2
"""

import argparse
import datetime
import http.client
import json
import os
import platform
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import procstat
import wasmtrace

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESHGUARD_WASM = os.path.join(REPO, "target/wasm32-wasip1/release/meshguard.wasm")
EMPTY_WASM = os.path.join(REPO, "benches/empty-filter/target/wasm32-wasip1/release/empty_filter.wasm")
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"

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

SINK_CLUSTER = "otel_sink"
UPSTREAM_CLUSTER = "bench_upstream"


def wasm_filter(name, path, config):
    return {
        "name": name,
        "typed_config": {
            "@type": WASM_TYPE,
            "config": {
                "name": name,
                "root_id": name,
                "vm_config": {"vm_id": name, "runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": path}}},
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config},
            },
        },
    }


def meshguard(config):
    return [wasm_filter("meshguard", MESHGUARD_WASM, config if isinstance(config, str) else json.dumps(config))]


def lua_filter():
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": LUA},
        },
    }


def admission_control_filter():
    """Envoy's own client-side throttling, the native peer of meshguard's breaker: a success rate
    over a sliding window per worker, rejecting with a probability when it falls (all requests
    here succeed, so it only records, as the closed breaker does)."""
    return {
        "name": "envoy.filters.http.admission_control",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.admission_control.v3.AdmissionControl",
            "enabled": {"default_value": True, "runtime_key": "admission_control.enabled"},
            "sampling_window": "30s",
            "success_criteria": {"http_criteria": {"http_success_status": [{"start": 100, "end": 500}]}},
        },
    }


def otel_tracing():
    """HCM tracing with Envoy's OpenTelemetry tracer: every request sampled (random_sampling 100 %),
    its span exported over gRPC to SINK_CLUSTER (benches' own sink Envoy, see sink_bootstrap)."""
    return {
        "generate_request_id": True,  # HCM's default, spelt out: x-request-id carries the sampling bit
        "tracing": {
            "random_sampling": {"value": 100},
            "provider": {
                "name": "envoy.tracers.opentelemetry",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig",
                    "grpc_service": {"envoy_grpc": {"cluster_name": SINK_CLUSTER}, "timeout": "1s"},
                    "service_name": "bench",
                },
            },
        },
    }


class Config:
    """One Envoy of the benchmark: the HTTP filters before the router, HCM settings, and the
    requests that drive it: `load` 'get' (GET `path`), 'unique' (POST, a fresh x-event-id per
    request), 'same' (POST, always the same x-event-id), 'json-header' or 'json-body' (POST of a
    1 KiB JSON event, a fresh id per request in `x-event-id` or in the body's `eventId`);
    `local`: every answer is meshguard's own reply (an error status by design)."""

    def __init__(self, desc, filters, load="get", path="/", local=False, hcm=None, otel=False, upstream=False, etcd=False):
        self.desc, self.filters, self.load, self.path, self.local = desc, filters, load, path, local
        # meshguard's dedup store in a local etcd (one member, started by the benchmark, pinned
        # to CPU 1 with the client): its CPU is reported beside Envoy's.
        self.etcd = etcd
        # Proxied to the sink Envoy (which answers at once) instead of a direct response: Envoy
        # reads the request body only for a request it forwards.
        self.upstream = upstream
        self.hcm = dict(hcm or {})
        self.otel = otel
        if otel:
            self.hcm.update(otel_tracing())

    @property
    def wasm(self):
        return any(f["typed_config"]["@type"] == WASM_TYPE for f in self.filters)

    def store_entries(self):
        """max_entries of meshguard's dedup store when this configuration fills it (unique keys)."""
        if self.load not in ("unique", "json-header", "json-body") or self.etcd:
            return None
        for f in self.filters:
            if f["name"] != "meshguard":
                continue
            try:
                cfg = json.loads(f["typed_config"]["config"]["configuration"]["value"])
            except (KeyError, ValueError):
                return None
            sections = [cfg.get("dedup")] + [r.get("dedup") for r in cfg.get("routes", [])]
            sizes = [s.get("max_entries", 100000) for s in sections if isinstance(s, dict)]
            return max(sizes) if sizes else None
        return None


ETCD_CLUSTER = "etcd"
ETCD_STORE = json.dumps(
    {"dedup": {"max_entries": 100000, "store": {"type": "etcd", "cluster": ETCD_CLUSTER, "authority": "etcd", "timeout": "500ms"}}}
)


def rules(n):
    """n rules matched on the path prefix, the one matching /api/orders/42 last; the others share
    its first 11 bytes (/api/orders) so that each comparison reads some of the path."""
    return {
        "routes": [{"name": f"r{i:03d}", "match": {"prefix": f"/api/orders-{i:03d}/"}} for i in range(n - 1)]
        + [{"name": "orders", "match": {"prefix": "/api/orders/"}}]
    }


# name -> configuration; the table lists rows in this order (then the h2: rows).
CONFIGS = {
    "envoy": Config("Envoy, no filter", []),
    "empty-wasm": Config("empty Rust proxy-wasm filter", [wasm_filter("empty", EMPTY_WASM, "")]),
    "lua": Config("Lua filter: read 5 headers, write 3", [lua_filter()]),
    "otel": Config(
        "Envoy's OpenTelemetry tracer, every request sampled, spans exported over gRPC to a local sink; x-request-id",
        [],
        otel=True,
    ),
    "trace+corr": Config("meshguard, default config (trace + correlation)", meshguard("{}")),
    "rules": Config(
        "meshguard, 3 rules matched on path/host/route name",
        meshguard(
            {
                "routes": [
                    {"name": "health", "match": {"prefix": "/healthz"}},
                    {"name": "orders", "match": {"host": "orders.prod", "methods": ["POST"]}},
                    {"name": "bench", "match": {"route_name": "bench"}},
                ]
            }
        ),
    ),
    "rules-1": Config("meshguard, default config + 1 rule on a path prefix (GET /api/orders/42, matching)", meshguard(rules(1)), path="/api/orders/42"),
    "rules-256": Config(
        "meshguard, default config + 256 rules on path prefixes, the matching one last (GET /api/orders/42)",
        meshguard(rules(256)),
        path="/api/orders/42",
    ),
    "breaker-closed": Config(
        "meshguard, trace + correlation + circuit breaker (closed, success path)", meshguard('{"circuit_breaker": {}}')
    ),
    "admission-control": Config(
        "Envoy's admission_control filter (success rate over 30 s; all requests succeed)", [admission_control_filter()]
    ),
    "breaker-open": Config(
        "meshguard, open circuit: every request answered locally (forced_open)",
        meshguard('{"circuit_breaker": {"mode": "forced_open"}}'),
        local=True,
    ),
    "all-features": Config(
        "meshguard, all four features: breaker closed, dedup on a first-seen key (POST, unique x-event-id)",
        meshguard('{"circuit_breaker": {}, "dedup": {}}'),
        load="unique",
    ),
    "dedup-replay": Config(
        "meshguard, dedup answering a duplicate locally (POST, the same x-event-id every time)",
        meshguard('{"dedup": {}}'),
        load="same",
    ),
    "dedup-1k": Config(
        "meshguard, dedup on a first-seen key (POST, unique x-event-id), store of max_entries 1 000",
        meshguard('{"dedup": {"max_entries": 1000}}'),
        load="unique",
    ),
    "dedup-100k": Config(
        "meshguard, dedup on a first-seen key, store of max_entries 100 000",
        meshguard('{"dedup": {"max_entries": 100000}}'),
        load="unique",
    ),
    "dedup-1m": Config(
        "meshguard, dedup on a first-seen key, store of max_entries 1 000 000",
        meshguard('{"dedup": {"max_entries": 1000000}}'),
        load="unique",
    ),
    "dedup-etcd": Config(
        "meshguard, dedup on a first-seen key (POST, unique x-event-id) with store etcd: one claim round trip per request",
        meshguard(ETCD_STORE),
        load="unique",
        etcd=True,
    ),
    "dedup-etcd-replay": Config(
        "meshguard, dedup with store etcd answering a duplicate from its own cache (POST, the same x-event-id)",
        meshguard(ETCD_STORE),
        load="same",
        etcd=True,
    ),
    "log-line": Config("meshguard + one JSON log line per request", meshguard('{"log": {"requests": true}}')),
    "key-header-1k": Config(
        "meshguard dedup, POST of a 1 KiB JSON event, a first-seen key in x-event-id",
        meshguard('{"dedup": {"body_key": "/eventId", "max_entries": 1000}}'),
        load="json-header",
        upstream=True,
    ),
    "key-body-1k": Config(
        "meshguard dedup, POST of a 1 KiB JSON event, a first-seen key in the body (body_key /eventId)",
        meshguard('{"dedup": {"body_key": "/eventId", "max_entries": 1000}}'),
        load="json-body",
        upstream=True,
    ),
}

# The 1 KiB JSON event of the json-* loads: `eventId` first, then padding in `data`.
JSON_PAD = "x" * 960
H2_DEFAULT = ["envoy", "empty-wasm", "trace+corr"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hcm_filter(stat_prefix, routes, http_filters, extra):
    config = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "codec_type": "AUTO",  # HTTP/1.1, or HTTP/2 with prior knowledge (h2c), on one listener
        "http2_protocol_options": {},
        "route_config": {"virtual_hosts": [{"name": stat_prefix, "domains": ["*"], "routes": routes}]},
        "http_filters": http_filters
        + [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            }
        ],
    }
    config.update(extra)
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": config}


def listener(name, port, hcm):
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [hcm]}],
    }


def static_cluster(name, port, http2=False):
    c = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}],
        },
    }
    if http2:
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    return c


class Etcd:
    """One etcd member on loopback with a temporary data directory (Debian's etcd-server)."""

    def __init__(self, workdir):
        self.port, peer = free_port(), free_port()
        data = os.path.join(workdir, "etcd-data")
        self.log_path = os.path.join(workdir, "etcd.log")
        self.log = open(self.log_path, "w")
        cmd = [
            "etcd", "--data-dir", data, "--name", "bench",
            "--listen-client-urls", f"http://127.0.0.1:{self.port}", "--advertise-client-urls", f"http://127.0.0.1:{self.port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"bench=http://127.0.0.1:{peer}", "--log-level", "warn", "--logger", "zap",
        ]
        self.proc = subprocess.Popen(pinned(cmd), stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{self.port}/v3/kv/range", data=b'{"key":"AA=="}', method="POST")
                with urllib.request.urlopen(req, timeout=1) as r:
                    r.read()
                    return
            except OSError:
                time.sleep(0.1)
        sys.exit(f"etcd not ready after 30 s; see {self.log_path}")

    def cpu_seconds(self):
        return procstat.cpu_seconds(self.proc.pid)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def bootstrap(port, admin, config, sink_port=None, otel_flush_spans=None, upstream_port=None, etcd_port=None):
    routes = [{"name": "bench", "match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]
    if config.upstream:
        routes = [{"name": "bench", "match": {"prefix": "/"}, "route": {"cluster": UPSTREAM_CLUSTER}}]
    b = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": [listener("bench", port, hcm_filter("bench", routes, config.filters, config.hcm))]},
    }
    if config.upstream:
        b["static_resources"]["clusters"] = [static_cluster(UPSTREAM_CLUSTER, upstream_port)]
    if config.etcd:
        b["static_resources"].setdefault("clusters", []).append(static_cluster(ETCD_CLUSTER, etcd_port))
    if config.otel:
        b["static_resources"]["clusters"] = [static_cluster(SINK_CLUSTER, sink_port, http2=True)]
        if otel_flush_spans:
            b["layered_runtime"] = {
                "layers": [{"name": "bench", "static_layer": {"tracing.opentelemetry.min_flush_spans": otel_flush_spans}}]
            }
    return b


def upstream_bootstrap(port, admin):
    """The upstream of the rows that forward their requests: an Envoy answering 200 at once."""
    routes = [{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": [listener("upstream", port, hcm_filter("upstream", routes, [], {"generate_request_id": False}))]},
    }


def sink_bootstrap(port, admin):
    """The OTLP collector stand-in: an Envoy answering every gRPC call (TraceService/Export) at
    once with a trailers-only `grpc-status: 0`, reading and dropping the spans."""
    routes = [
        {
            "match": {"prefix": "/"},
            "direct_response": {"status": 200},
            "response_headers_to_add": [
                {"header": {"key": "content-type", "value": "application/grpc"}},
                {"header": {"key": "grpc-status", "value": "0"}},
            ],
        }
    ]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [listener("sink", port, hcm_filter("sink", routes, [], {"codec_type": "HTTP2", "generate_request_id": False}))]
        },
    }


class Envoy:
    def __init__(self, name, config_dict, workdir, cpu="0", port=None, admin=None):
        self.name = name
        self.port, self.admin = port, admin
        safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", name)
        path = os.path.join(workdir, f"{safe}.json")
        with open(path, "w") as f:
            json.dump(config_dict, f)
        self.log_path = os.path.join(workdir, f"{safe}.log")
        self.log = open(self.log_path, "w")
        cmd = ["envoy", "-c", path, "--concurrency", "1", "--use-dynamic-base-id", "--log-level", "warn"]
        if shutil.which("taskset"):
            cmd = ["taskset", "-c", cpu] + cmd
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"{name}: Envoy exited; see {self.log_path}")
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

    def admin_post(self, path):
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin}{path}", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=5) as r:
            r.read()

    def stats(self, pattern):
        """Counters and gauges whose name matches the regex pattern, as {name: int}."""
        url = f"http://127.0.0.1:{self.admin}/stats?filter={urllib.request.quote(pattern)}"
        with urllib.request.urlopen(url, timeout=5) as r:
            out = {}
            for line in r.read().decode().splitlines():
                name, _, value = line.rpartition(": ")
                if value.strip().isdigit():
                    out[name] = int(value)
            return out

    def stat(self, name):
        return self.stats(f"^{re.escape(name)}$").get(name, 0)

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


SCRIPT_DIR = tempfile.mkdtemp(prefix="meshguard-wrk-")


def wrk_script(load):
    """The wrk Lua script of a load (None for plain GETs). Unique event ids carry a token fresh
    for every wrk run, so no two runs (warm-up, fill, rounds) ever send the same id."""
    if load == "unique":
        token = uuid.uuid4().hex[:16]
        return f"""
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", nil, {{["x-event-id"] = "{token}-" .. n}}, "")
end
"""
    if load in ("json-header", "json-body"):
        token = uuid.uuid4().hex[:16]
        in_body = load == "json-body"
        return f"""
local n = 0
request = function()
  n = n + 1
  local id = "{token}-" .. n
  local body = '{{"eventId":"' .. {'id' if in_body else '"none"'} .. '","eventType":"OrderPlaced","data":"{JSON_PAD}"}}'
  local headers = {{["content-type"] = "application/json"}}
  {'' if in_body else 'headers["x-event-id"] = id'}
  return wrk.format("POST", nil, headers, body)
end
"""
    if load == "same":
        return """
request = function()
  return wrk.format("POST", nil, {["x-event-id"] = "the-same-event"}, "")
end
"""
    return None


def pinned(cmd):
    return ["taskset", "-c", "1"] + cmd if shutil.which("taskset") else cmd


def run_wrk(port, config, duration, connections):
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", f"http://127.0.0.1:{port}{config.path}"]
    script = wrk_script(config.load)
    if script:
        fd, path = tempfile.mkstemp(suffix=".lua", dir=SCRIPT_DIR)
        with os.fdopen(fd, "w") as f:
            f.write(script)
        cmd[1:1] = ["-s", path]
    out = subprocess.run(pinned(cmd), capture_output=True, text=True, check=True).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": requests,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_us": parse_latency(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),
        "p99_us": parse_latency(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),
        "non_2xx": int(errors.group(1)) if errors else 0,
        "out": out,
    }


def percentile(sorted_values, q):
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def run_h2load(port, config, duration, connections, streams, workdir):
    if config.load != "get":
        sys.exit("h2 rows send GETs only (h2load cannot send a fresh event id per request)")
    log = os.path.join(workdir, "h2load.log")
    cmd = ["h2load", "-t1", f"-c{connections}", f"-m{streams}", "-D", str(duration), f"--log-file={log}", f"http://127.0.0.1:{port}{config.path}"]
    out = subprocess.run(pinned(cmd), capture_output=True, text=True, check=True).stdout
    if "Application protocol: h2c" not in out:
        sys.exit(f"h2load did not speak h2c:\n{out}")
    done = int(re.search(r"requests: \d+ total, \d+ started, (\d+) done", out).group(1))
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out).groups()
    latencies = []
    with open(log) as f:
        for line in f:  # start time (µs since the epoch), status, duration (µs)
            parts = line.split()
            if len(parts) == 3:
                latencies.append(int(parts[2]))
    os.unlink(log)
    latencies.sort()
    return {
        "requests": done,
        "rps": float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", out).group(1)),
        "p50_us": percentile(latencies, 0.50),
        "p99_us": percentile(latencies, 0.99),
        "non_2xx": done - int(codes[0]) - int(codes[1]),
        "out": out,
    }


class Row:
    def __init__(self, name, config_name, proto):
        self.name, self.config_name, self.proto = name, config_name, proto
        self.config = CONFIGS[config_name]


def run_load(row, envoy, duration, args, workdir):
    if row.proto == "h2":
        r = run_h2load(envoy.port, row.config, duration, args.connections, args.h2_streams, workdir)
    else:
        r = run_wrk(envoy.port, row.config, duration, args.connections)
    if row.config.local:
        if r["non_2xx"] != r["requests"]:
            sys.exit(f"{row.name}: expected only local replies:\n{r['out']}")
    elif r["non_2xx"]:
        sys.exit(f"{row.name}: {r['non_2xx']} error responses:\n{r['out']}")
    return r


def fill_store(row, envoy, args, workdir):
    """Drives a dedup row with unique keys until its store holds `--store-fill` of its slots
    (3 per entry of max_entries): with ttl 10m nothing expires during a run, so a store that is
    full stays full (each new key evicts an old one), the state every row is measured in."""
    entries = row.config.store_entries()
    target = args.store_fill * 3 * entries
    started = time.time()
    chunk = 1  # seconds of load between two reads of the gauge: 1, then what the rate suggests, at most 5
    held = envoy.stat("wasmcustom.meshguard_dedup_entries")
    while held < target:
        if time.time() - started > args.fill_timeout:
            print(f"{row.name}: store fill stopped after {args.fill_timeout} s at {held} entries", file=sys.stderr)
            break
        run_load(row, envoy, chunk, args, workdir)
        now = envoy.stat("wasmcustom.meshguard_dedup_entries")
        print(f"{row.name}: store {held} -> {now} of {3 * entries} slots", file=sys.stderr)
        rate = max(now - held, 1) / chunk
        chunk = max(1, min(5, round((target - now) / rate)))
        held = now
    return time.time() - started


def send_h1(port, config, n):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    token = uuid.uuid4().hex[:16]
    statuses = []
    for i in range(n):
        if config.load == "get":
            conn.request("GET", config.path)
        elif config.load.startswith("json-"):
            event = f"count-{token}-{i}"
            body = json.dumps({"eventId": event if config.load == "json-body" else "none", "eventType": "OrderPlaced", "data": JSON_PAD})
            headers = {"content-type": "application/json"}
            if config.load == "json-header":
                headers["x-event-id"] = event
            conn.request("POST", config.path, body=body.encode(), headers=headers)
        else:
            event = f"count-{token}-{i}" if config.load == "unique" else "the-same-event"
            conn.request("POST", config.path, body=b"", headers={"x-event-id": event, "content-length": "0"})
        resp = conn.getresponse()
        resp.read()
        statuses.append(resp.status)
    conn.close()
    return statuses


def count_calls(row, envoy, n):
    """Host calls and VM entries of n requests, from the wasm trace lines Envoy writes while they
    are served (switched on through the admin port for these requests only)."""
    envoy.log.flush()
    offset = os.path.getsize(envoy.log_path)
    envoy.admin_post("/logging?wasm=trace")
    try:
        if row.proto == "h2":
            cmd = ["h2load", "-n", str(n), "-c1", "-m1", f"http://127.0.0.1:{envoy.port}{row.config.path}"]
            subprocess.run(pinned(cmd), capture_output=True, text=True, check=True)
        else:
            statuses = send_h1(envoy.port, row.config, n)
            bad = [s for s in statuses if (s < 400) == row.config.local]
            if bad:
                sys.exit(f"{row.name}: unexpected statuses while counting: {bad[:5]}")
        deadline = time.time() + 15
        while True:  # the last stream's proxy_on_delete comes after its response
            with open(envoy.log_path, errors="replace") as f:
                f.seek(offset)
                text = f.read()
            if text.count("[host->vm] proxy_on_delete(") >= n or time.time() > deadline:
                break
            time.sleep(0.1)
    finally:
        envoy.admin_post("/logging?wasm=warning")
    c = wasmtrace.count(text.splitlines())
    entries, calls = c.per_request(n)
    problems = []
    if c.entries["proxy_on_context_create"] != n:
        problems.append(f"{c.entries['proxy_on_context_create']} stream contexts for {n} requests")
    if c.unclosed:
        problems.append(f"{c.unclosed} calls without a return line")
    return {"requests": n, "vm_entries": entries, "host_calls": calls, "problems": problems}


def machine():
    try:
        version = subprocess.run(["envoy", "--version"], capture_output=True, text=True).stdout.strip().split("version: ")[-1]
    except OSError:
        version = "?"
    return {
        "nproc": os.cpu_count(),
        "cpu": procstat.cpu_model(),
        "kernel": f"{platform.system()} {platform.release()} {platform.machine()}",
        "envoy": version,
    }


def fmt_n(n):
    return wasmtrace.fmt(n)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5, help="seconds of load per row and round")
    ap.add_argument("--connections", type=int, default=8, help="client connections (wrk -c, h2load -c)")
    ap.add_argument("--h2-streams", type=int, default=1, help="concurrent streams per HTTP/2 connection (h2load -m)")
    ap.add_argument("--only", nargs="*", help="rows to run (default: all); an h2: row is h2:CONFIGURATION")
    ap.add_argument(
        "--h2",
        nargs="*",
        default=H2_DEFAULT,
        metavar="CONFIGURATION",
        help=f"configurations that also get an HTTP/2 row (default: {' '.join(H2_DEFAULT)}; GET rows only)",
    )
    ap.add_argument("--count-requests", type=int, default=100, help="requests counted from the wasm trace log per row (0: no counts)")
    ap.add_argument(
        "--store-fill",
        type=float,
        default=0.95,
        help="before the rounds, drive every first-seen dedup row until its store holds this share "
        "of its 3 x max_entries slots (0: start empty; default 0.95)",
    )
    ap.add_argument("--fill-timeout", type=int, default=900, help="seconds at most to fill one store")
    ap.add_argument(
        "--otel-flush-spans",
        type=int,
        help="spans per OTLP export of the otel row (runtime tracing.opentelemetry.min_flush_spans; default: Envoy's, 5)",
    )
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=WASM[:CONFIG]",
        help="an extra configuration running another build (A/B of a change), with CONFIG or {}; "
        "WASM 'none' is Envoy alone, 'empty' the empty filter. A NAME starting with a configuration's "
        "name (all-features, dedup-replay, rules-256, breaker-open, ...) sends that configuration's requests",
    )
    args = ap.parse_args()
    command = os.environ.get("MESHGUARD_BENCH_COMMAND") or shlex.join(["python3", "benches/load.py"] + sys.argv[1:])
    originals = list(CONFIGS)
    for variant in args.variant:
        name, _, rest = variant.partition("=")
        path, _, config = rest.partition(":")
        like = max((k for k in originals if name.startswith(k)), key=len, default=None)
        base = CONFIGS[like] if like else Config("", [])
        if path == "none":  # Envoy alone, e.g. under another configuration's requests
            filters, desc = [], "Envoy, no filter"
        elif path == "empty":
            filters, desc = [wasm_filter("empty", EMPTY_WASM, "")], "empty Rust proxy-wasm filter"
        else:
            filters = [wasm_filter("meshguard", os.path.abspath(path), config or "{}")]
            desc = f"variant {os.path.basename(path)} {config or '{}'}"
        if like:
            desc += f" ({like}'s requests)"
        # Envoy alone or the empty filter answers 200 where the configuration replied itself.
        local = base.local and path not in ("none", "empty")
        CONFIGS[name] = Config(desc, filters, load=base.load, path=base.path, local=local)
        if args.only is not None:
            args.only.append(name)

    for path in (MESHGUARD_WASM, EMPTY_WASM):
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: run scripts/bench.sh (it builds it)")
    all_rows = [Row(n, n, "h1") for n in CONFIGS] + [Row(f"h2:{n}", n, "h2") for n in args.h2]
    for row in all_rows:
        if row.proto == "h2" and (row.config_name not in CONFIGS or row.config.load != "get"):
            sys.exit(f"--h2 {row.config_name}: not a configuration that sends GETs")
    by_name = {r.name: r for r in all_rows}
    if args.only:
        for n in args.only:  # any GET configuration can have an h2: row
            if n not in by_name and n.startswith("h2:") and CONFIGS.get(n[3:], Config("", [], load="")).load == "get":
                by_name[n] = Row(n, n[3:], "h2")
        unknown = [n for n in args.only if n not in by_name]
        if unknown:
            sys.exit(f"unknown rows: {' '.join(unknown)}; rows: {' '.join(by_name)}")
        rows = [by_name[n] for n in dict.fromkeys(args.only)]
    else:
        rows = all_rows
    if any(r.proto == "h2" for r in rows) and not shutil.which("h2load"):
        sys.exit("h2load is missing (Debian nghttp2-client); scripts/bench.sh installs it")

    info = machine()
    info["load_before"] = procstat.loadavg()
    info["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    workdir = tempfile.mkdtemp(prefix="meshguard-bench-")
    envoys, sink, upstream, etcd = {}, None, None, None
    started = time.time()
    try:
        configs = list(dict.fromkeys(r.config_name for r in rows))
        if any(CONFIGS[c].otel for c in configs):
            sink_port, sink_admin = free_port(), free_port()
            sink = Envoy("otel-sink", sink_bootstrap(sink_port, sink_admin), workdir, cpu="1", port=sink_port, admin=sink_admin)
        if any(CONFIGS[c].upstream for c in configs):
            up_port, up_admin = free_port(), free_port()
            upstream = Envoy("upstream", upstream_bootstrap(up_port, up_admin), workdir, cpu="1", port=up_port, admin=up_admin)
        if any(CONFIGS[c].etcd for c in configs):
            if not shutil.which("etcd"):
                sys.exit("etcd is missing (Debian etcd-server); scripts/bench.sh installs it")
            etcd = Etcd(workdir)
        for c in configs:
            port, admin = free_port(), free_port()
            b = bootstrap(
                port,
                admin,
                CONFIGS[c],
                sink.port if sink else None,
                args.otel_flush_spans,
                upstream.port if upstream else None,
                etcd.port if etcd else None,
            )
            envoys[c] = Envoy(c, b, workdir, port=port, admin=admin)
        fills = {}
        if args.store_fill > 0:
            for row in rows:
                if row.proto == "h1" and row.config.store_entries() and row.config_name not in fills:
                    fills[row.config_name] = fill_store(row, envoys[row.config_name], args, workdir)
        if etcd:  # the first leases are granted on the first ticks
            time.sleep(1)
        for c in configs:  # the replayed event is processed once before concurrent copies arrive
            if CONFIGS[c].load == "same":
                send_h1(envoys[c].port, CONFIGS[c], 1)
        for row in rows:  # warm-up: JIT, connection pools, allocator
            run_load(row, envoys[row.config_name], 2, args, workdir)
        samples = {r.name: [] for r in rows}
        for rnd in range(args.rounds):
            order = rows[rnd % len(rows):] + rows[: rnd % len(rows)]
            for row in order:
                e = envoys[row.config_name]
                before = e.cpu_seconds()
                store_before = etcd.cpu_seconds() if etcd and row.config.etcd else None
                r = run_load(row, e, args.duration, args, workdir)
                if r["requests"] == 0 or e.proc.poll() is not None:
                    sys.exit(f"{row.name}: no requests completed (Envoy {'exited' if e.proc.poll() is not None else 'stalled'}); see {e.log_path}")
                cpu_us = (e.cpu_seconds() - before) * 1e6 / r["requests"]
                sample = {"cpu_us": cpu_us, "rps": r["rps"], "p50_us": r["p50_us"], "p99_us": r["p99_us"]}
                if store_before is not None:
                    sample["etcd_cpu_us"] = (etcd.cpu_seconds() - store_before) * 1e6 / r["requests"]
                samples[row.name].append(sample)
            print(f"round {rnd + 1}/{args.rounds} done ({time.time() - started:.0f} s)", file=sys.stderr)
        rss = {r.name: envoys[r.config_name].rss_mb() for r in rows}
        notes = collect_notes(rows, envoys, sink)
        counts = {}
        if args.count_requests > 0:
            for row in rows:
                if row.config.wasm:
                    counts[row.name] = count_calls(row, envoys[row.config_name], args.count_requests)
        info["load_after"] = procstat.loadavg()
    finally:
        for e in envoys.values():
            e.stop()
        if sink:
            sink.stop()
        if upstream:
            upstream.stop()
        if etcd:
            etcd.stop()

    report(args, command, info, rows, samples, rss, counts, notes, fills)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"machine": info, "command": command, "samples": samples, "rss_mb": rss, "counts": counts, "notes": notes, "args": vars(args)},
                f,
                indent=2,
            )
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.rmtree(SCRIPT_DIR, ignore_errors=True)


def collect_notes(rows, envoys, sink):
    """What the stats say about rows whose meaning depends on them (read after the rounds)."""
    notes = {}
    for c in dict.fromkeys(r.config_name for r in rows):
        e, config = envoys[c], CONFIGS[c]
        if config.otel:
            s = e.stats(r"^(tracing\.opentelemetry\.|cluster\.otel_sink\.upstream_rq_(total|pending_overflow|timeout|2xx)$|http\.bench\.downstream_rq_total$)")
            requests = s.get("http.bench.downstream_rq_total", 0)
            exports = s.get("cluster.otel_sink.upstream_rq_total", 0)
            notes[c] = {
                "requests": requests,
                "spans_sent": s.get("tracing.opentelemetry.spans_sent", 0),
                "spans_dropped": s.get("tracing.opentelemetry.spans_dropped", 0),
                "exports": exports,
                "exports_answered": sink.stat("http.sink.downstream_rq_2xx") if sink else 0,
                "overflow": s.get("cluster.otel_sink.upstream_rq_pending_overflow", 0),
                "timeouts": s.get("cluster.otel_sink.upstream_rq_timeout", 0),
            }
        if config.store_entries():
            s = e.stats(r"meshguard_dedup_(entries|evictions_total|total)$")
            outcomes = {}
            for k, v in s.items():
                m = re.search(r"outcome=\.=(\w+);", k)
                if m:
                    outcomes[m.group(1)] = outcomes.get(m.group(1), 0) + v
            notes[c] = {
                "max_entries": config.store_entries(),
                "entries": s.get("wasmcustom.meshguard_dedup_entries", 0),
                "evictions": s.get("wasmcustom.meshguard_dedup_evictions_total", 0),
                "outcomes": {k: v for k, v in outcomes.items() if v},
            }
        if config.etcd:
            s = e.stats(r"meshguard_dedup_store_total$")
            outcomes = {}
            for k, v in s.items():
                m = re.search(r"outcome=\.=(\w+);", k)
                if m and v:
                    outcomes[m.group(1)] = v
            notes.setdefault(c, {})["store_outcomes"] = outcomes
    return notes


def report(args, command, info, rows, samples, rss, counts, notes, fills):
    def med(name, key):
        return statistics.median(s[key] for s in samples[name])

    bases = {}
    for proto, want in (("h1", "envoy"), ("h2", "h2:envoy")):
        names = [r.name for r in rows if r.proto == proto]
        if names:
            bases[proto] = want if want in names else names[0]
    print("## Load benchmark\n")
    print(f"* Machine: {info['nproc']} CPUs (nproc), {info['cpu']}, {info['kernel']}; "
          f"load average {info['load_before']:.2f} before, {info.get('load_after', 0):.2f} after the run")
    print(f"* Envoy {info['envoy']}, `--concurrency 1` pinned to CPU 0; clients pinned to CPU 1: "
          f"`wrk -t1 -c{args.connections}` (HTTP/1.1), `h2load -t1 -c{args.connections} -m{args.h2_streams}` (h2c, prior knowledge)")
    print(f"* Command: `{command}` ({info['date']})")
    print(f"* {args.rounds} rounds × {args.duration} s per row, rows alternated; medians over rounds "
          f"(CPU range: lowest–highest round); ratios to `{bases.get('h1', '-')}` for HTTP/1.1 rows"
          + (f", to `{bases['h2']}` for HTTP/2 rows" if "h2" in bases else ""))
    print(f"* meshguard.wasm {os.path.getsize(MESHGUARD_WASM)} bytes; empty filter {os.path.getsize(EMPTY_WASM)} bytes")
    if counts:
        print(f"* Host calls and VM entries: per request, counted from Envoy's wasm trace log over "
              f"{args.count_requests} requests per row after the rounds (benches/wasmtrace.py)")
    print()
    print("| row | what | proto | CPU µs/req | CPU range | CPU ratio | req/s | p50 µs | p99 µs | RSS MB | host calls/req | VM entries/req |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = [r for r in rows if r.proto == "h1"] + [r for r in rows if r.proto == "h2"]
    for r in rows:
        cpu = [s["cpu_us"] for s in samples[r.name]]
        base = bases[r.proto]
        c = counts.get(r.name)
        calls = fmt_n(sum(c["host_calls"].values())) if c else "—"
        entries = fmt_n(sum(c["vm_entries"].values())) if c else "—"
        if c and c["problems"]:
            calls, entries = calls + " ?", entries + " ?"
        print(
            f"| {r.name} | {r.config.desc} | {'HTTP/2' if r.proto == 'h2' else 'HTTP/1.1'} | {med(r.name, 'cpu_us'):.1f} "
            f"| {min(cpu):.1f}–{max(cpu):.1f} | {med(r.name, 'cpu_us') / med(base, 'cpu_us'):.2f} "
            f"| {med(r.name, 'rps'):.0f} | {med(r.name, 'p50_us'):.0f} | {med(r.name, 'p99_us'):.0f} "
            f"| {rss[r.name]:.1f} | {calls} | {entries} |"
        )
    if counts:
        print("\n### Host calls and VM entries per request, by name\n")
        print("| row | VM entries | host calls |")
        print("|---|---|---|")
        for r in rows:
            c = counts.get(r.name)
            if not c:
                continue
            vm = ", ".join(f"{k.removeprefix('proxy_')} {fmt_n(v)}" for k, v in c["vm_entries"].items())
            hc = ", ".join(f"{k.removeprefix('proxy_')} {fmt_n(v)}" for k, v in c["host_calls"].items()) or "none"
            print(f"| {r.name} | {fmt_n(sum(c['vm_entries'].values()))}: {vm} | {fmt_n(sum(c['host_calls'].values()))}: {hc} |")
        problems = [f"{n}: {'; '.join(c['problems'])}" for n, c in counts.items() if c["problems"]]
        if problems:
            print("\nCounts marked ? did not check out: " + "; ".join(problems))
    lines = []
    for c, n in notes.items():
        if "spans_sent" in n:
            per = n["requests"] / n["exports"] if n["exports"] else 0
            lines.append(
                f"`{c}`: {n['spans_sent']} spans sent for {n['requests']} requests ({n['spans_dropped']} dropped) in "
                f"{n['exports']} gRPC exports (one per {per:.1f} requests; runtime min_flush_spans "
                f"{args.otel_flush_spans or '5, Envoy default'}), {n['exports_answered']} answered by the sink, "
                f"{n['overflow']} overflowed, {n['timeouts']} timed out"
            )
        if "max_entries" in n:
            fill = f", filled for {fills[c]:.0f} s before the rounds" if c in fills else ""
            lines.append(
                f"`{c}`: store of max_entries {n['max_entries']} ({3 * n['max_entries']} slots) held {n['entries']} "
                f"entries at the end{fill}; {n['evictions']} evictions; outcomes "
                + ", ".join(f"{k} {v}" for k, v in sorted(n["outcomes"].items()))
            )
    for r in rows:
        store = [x["etcd_cpu_us"] for x in samples[r.name] if "etcd_cpu_us" in x]
        if store:
            s = [x for x in samples[r.name]]
            outcomes = notes.get(r.config_name, {}).get("store_outcomes", {})
            lines.append(
                f"`{r.name}`: etcd's own CPU {statistics.median(store):.1f} µs/request (one member on CPU 1, beside the client; "
                f"not in Envoy's column); store outcomes "
                + (", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) or "none")
            )
    if lines:
        print("\nNotes:\n")
        for line in lines:
            print(f"* {line}")


if __name__ == "__main__":
    main()
