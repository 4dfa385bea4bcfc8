#!/usr/bin/env python3
"""The post-link step of meshguard's build (scripts/build-wasm.sh): removes the exports of the
proxy-wasm callbacks meshguard never uses. The Rust SDK exports all of them; Envoy's proxy-wasm
host enters the VM for every callback a module exports and skips the ones it does not, so
without `proxy_on_response_body` and `proxy_on_done` Envoy enters meshguard two times fewer per
request (measured: docs/performance.md "Exports"). The functions stay in the module (only the
export entries go); nothing else changes, and pruning a pruned module changes nothing.

    python3 scripts/prune_exports.py IN.wasm OUT.wasm --unused     # every callback meshguard does not use
    python3 scripts/prune_exports.py IN.wasm OUT.wasm proxy_on_done ...
    python3 scripts/prune_exports.py --check IN.wasm               # fails if one of them is exported
"""

import sys

# Callbacks of proxy-wasm ABI 0.2.1 that meshguard never needs (src/host: no response body,
# metadata, network filter, queue, gRPC or foreign-function callbacks; `on_done` only returns
# true, which is what Envoy assumes when it is missing).
UNUSED = [
    "proxy_on_response_body",
    "proxy_on_done",
    "proxy_on_request_metadata",
    "proxy_on_response_metadata",
    "proxy_on_new_connection",
    "proxy_on_downstream_data",
    "proxy_on_upstream_data",
    "proxy_on_downstream_connection_close",
    "proxy_on_upstream_connection_close",
    "proxy_on_queue_ready",
    "proxy_on_grpc_receive_initial_metadata",
    "proxy_on_grpc_receive",
    "proxy_on_grpc_receive_trailing_metadata",
    "proxy_on_grpc_close",
    "proxy_on_foreign_function",
]


def leb(data, pos):
    result, shift = 0, 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return result, pos


def enc(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def prune(data, drop):
    assert data[:4] == b"\0asm", "not a wasm module"
    out, pos, removed = bytearray(data[:8]), 8, []
    while pos < len(data):
        sid = data[pos]
        size, body = leb(data, pos + 1)
        content = data[body : body + size]
        pos = body + size
        if sid == 7:
            count, p = leb(content, 0)
            kept = []
            for _ in range(count):
                n, p2 = leb(content, p)
                name = content[p2 : p2 + n].decode()
                end = p2 + n + 1
                _, end = leb(content, end)
                if name in drop:
                    removed.append(name)
                else:
                    kept.append(content[p:end])
                p = end
            content = enc(len(kept)) + b"".join(kept)
        out += bytes([sid]) + enc(len(content)) + content
    return bytes(out), removed


def exports(data):
    names, pos = [], 8
    while pos < len(data):
        sid = data[pos]
        size, body = leb(data, pos + 1)
        if sid == 7:
            count, p = leb(data, body)
            for _ in range(count):
                n, p2 = leb(data, p)
                names.append(data[p2 : p2 + n].decode())
                _, p = leb(data, p2 + n + 1)
        pos = body + size
    return names


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--check":
        with open(sys.argv[2], "rb") as f:
            left = [n for n in exports(f.read()) if n in UNUSED]
        if left:
            sys.exit(f"{sys.argv[2]}: exports callbacks meshguard does not use: {' '.join(left)} (build with scripts/build-wasm.sh)")
        return
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    src, dst, names = sys.argv[1], sys.argv[2], sys.argv[3:]
    drop = set(UNUSED if names == ["--unused"] else names)
    with open(src, "rb") as f:
        data, removed = prune(f.read(), drop)
    with open(dst, "wb") as f:
        f.write(data)
    print(f"{dst}: removed {len(removed)} exports: {' '.join(removed)}", file=sys.stderr)


if __name__ == "__main__":
    main()
