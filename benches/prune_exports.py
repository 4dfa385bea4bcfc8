#!/usr/bin/env python3
"""Writes a copy of a wasm module without some of its exports: the A/B of "export only the
callbacks meshguard uses" (docs/performance.md). Envoy's proxy-wasm host skips a callback whose
export is missing, so a module without `proxy_on_response_body` is never entered for response
body chunks. The functions stay in the module (only the export entries go); nothing else changes.

    python3 benches/prune_exports.py IN.wasm OUT.wasm proxy_on_response_body proxy_on_done ...
    python3 benches/prune_exports.py IN.wasm OUT.wasm --unused   # every callback meshguard does not use
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


def main():
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
