#!/usr/bin/env python3
"""Counts proxy-wasm host calls and VM entries in Envoy's wasm trace log.

At `wasm:trace` (`--component-log-level wasm:trace`, or `POST /logging?wasm=trace` on the admin
port) Envoy 1.40 logs every crossing of the wasm boundary from source/extensions/common/wasm/
wasm_vm.cc, one line each way:

    [host->vm] proxy_on_request_headers(3, 8, 1)          a VM entry: Envoy calls into the module
    [host<-vm] proxy_on_request_headers return: 0          ... and it returns
    [vm->host] env.proxy_get_header_map_pairs(0, 1048172, 1048160)   a host call from the module
    [vm<-host] env.proxy_get_header_map_pairs return: 0                ... and its return

A VM entry is every `[host->vm]` line: the stream callbacks (proxy_on_context_create,
proxy_on_request_headers, ..., proxy_on_delete) and the `proxy_on_memory_allocate` calls Envoy
makes into the module while serving a host call that returns data (the header-map read, a
property, shared data). A host call is every `[vm->host]` line, named by its import
(`env.proxy_*`, or `wasi_snapshot_preview1.*`). The `return` lines are not counted; they only
check that every call was closed.

    python3 benches/wasmtrace.py envoy.log --requests 100

counts a whole log (start Envoy with the trace level only for the requests to count, or cut the
log first); benches/load.py counts the part of each Envoy's log written while it sent a fixed
number of requests with the trace level switched on.
"""

import argparse
import collections
import re
import sys

CALL = re.compile(r"\[(host->vm|vm->host)\] ([A-Za-z0-9_.]+)\(")
RETURN = re.compile(r"\[(host<-vm|vm<-host)\] ([A-Za-z0-9_.]+) return")


class Counts:
    def __init__(self):
        self.entries = collections.Counter()  # VM entries by callback name
        self.calls = collections.Counter()  # host calls by import name (module prefix dropped for env.)
        self.unclosed = 0  # calls without their return line (a cut log, or a trap)

    def per_request(self, requests):
        return (
            {k: v / requests for k, v in sorted(self.entries.items())},
            {k: v / requests for k, v in sorted(self.calls.items())},
        )


def short(name):
    return name[4:] if name.startswith("env.") else name


def count(lines):
    """Counts the calls in an iterable of log lines."""
    c = Counts()
    open_calls = collections.Counter()
    for line in lines:
        m = CALL.search(line)
        if m:
            kind, name = m.groups()
            (c.entries if kind == "host->vm" else c.calls)[short(name)] += 1
            open_calls[short(name)] += 1
            continue
        m = RETURN.search(line)
        if m:
            open_calls[short(m.group(2))] -= 1
    c.unclosed = sum(v for v in open_calls.values() if v > 0)
    return c


def fmt(n):
    return f"{n:.0f}" if abs(n - round(n)) < 0.005 else f"{n:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log", help="Envoy's log with wasm:trace lines")
    ap.add_argument("--requests", type=int, default=1, help="divide by this many requests")
    args = ap.parse_args()
    with open(args.log, errors="replace") as f:
        c = count(f)
    entries, calls = c.per_request(args.requests)
    print(f"VM entries per request: {fmt(sum(entries.values()))}")
    for k, v in entries.items():
        print(f"  {k:45} {fmt(v)}")
    print(f"host calls per request: {fmt(sum(calls.values()))}")
    for k, v in calls.items():
        print(f"  {k:45} {fmt(v)}")
    if c.unclosed:
        print(f"warning: {c.unclosed} calls without a return line", file=sys.stderr)


if __name__ == "__main__":
    main()
