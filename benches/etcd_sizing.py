#!/usr/bin/env python3
"""What meshguard's keys cost etcd, measured (docs/etcd-store.md "Sizing").

Starts one throwaway etcd member (the `etcd` on PATH, 3.4: scripts/setup.sh's ensure_etcd) on free
ports in a temporary directory, then drives it through the JSON gateway the way docs/etcd-store.md
describes meshguard's store: per event one claim transaction (create the key if absent, else read
it) with an in-flight lease, then one completion transaction (conditioned on the claimed value)
that moves the key to a `ttl` lease. Keys are `<prefix><scope>/<32 hex>`. Prints, from etcd's own
`/v3/maintenance/status`:

* bytes of bbolt in use per revision written (claim + completion = 2 per event), before compaction;
* bytes in use per live key after a compaction (what the keyspace costs once history is gone);
* after the ttl lease is revoked (as when it expires): the tombstones, then the space after
  another compaction;
* claim + completion throughput with N concurrent HTTP/1.1 keep-alive clients (one member, no
  replication, this machine's disk: a data point, not a capacity figure).

    python3 benches/etcd_sizing.py [--events 20000] [--clients 16]

Only the standard library; the etcd process and its directory are removed at the end.
"""

import argparse
import base64
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

PREFIX = "/meshguard/"
SCOPE = "orders/orders-consumer"


def b64(data):
    return base64.b64encode(data if isinstance(data, bytes) else data.encode()).decode()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def post(self, path, body):
        self.conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
        response = self.conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path}: HTTP {response.status}: {data[:200]!r}")
        return json.loads(data)


def key(i):
    return f"{PREFIX}{SCOPE}/{i:032x}"


def claim_and_complete(client, i, in_flight_lease, ttl_lease):
    k = b64(key(i))
    nonce = os.urandom(8).hex()
    in_flight = b64(f"f {nonce}")
    answer = client.post("/v3/kv/txn", {
        "compare": [{"target": "CREATE", "key": k, "create_revision": "0"}],
        "success": [{"request_put": {"key": k, "value": in_flight, "lease": in_flight_lease}}],
        "failure": [{"request_range": {"key": k}}],
    })
    if not answer.get("succeeded"):
        raise RuntimeError(f"claim of {key(i)} found the key: {answer}")
    # ~40 bytes: "c <status> <nonce> <fingerprint>" in some encoding; the size is what matters.
    done = b64(f"c 200 {nonce} {os.urandom(8).hex()}")
    answer = client.post("/v3/kv/txn", {
        "compare": [{"target": "VALUE", "key": k, "value": in_flight}],
        "success": [{"request_put": {"key": k, "value": done, "lease": ttl_lease}}],
    })
    if not answer.get("succeeded"):
        raise RuntimeError(f"completion of {key(i)} failed: {answer}")


def status(client):
    s = client.post("/v3/maintenance/status", {})
    return int(s["dbSize"]), int(s.get("dbSizeInUse", 0)), int(s["header"]["revision"])


def compact(client):
    _, _, revision = status(client)
    client.post("/v3/kv/compaction", {"revision": str(revision), "physical": True})
    settle(client)


def settle(client):
    """bbolt frees a write's old pages only at a later commit, and etcd commits its backend every
    100 ms: write once more and wait past that before reading the space in use."""
    time.sleep(0.3)
    client.post("/v3/kv/put", {"key": b64("/meshguard-sizing/settle"), "value": b64("x")})
    time.sleep(0.3)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="meshguard-etcd-sizing-")
    client_port, peer_port = free_port(), free_port()
    client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    etcd = subprocess.Popen(
        ["etcd", "--name", "m0", "--data-dir", os.path.join(workdir, "m0"),
         "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
         "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
         "--initial-cluster", f"m0={peer_url}", "--logger", "zap", "--log-level", "warn"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(workdir, "etcd.log"), "w"))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                client = Client(client_port)
                status(client)
                break
            except (OSError, RuntimeError, http.client.HTTPException):
                if time.monotonic() > deadline:
                    sys.exit(f"etcd did not start: {open(os.path.join(workdir, 'etcd.log')).read()}")
                time.sleep(0.05)
        print(f"etcd {client.post('/v3/maintenance/status', {})['version']}, {args.events} events, "
              f"keys like {key(1)} ({len(key(1))} bytes)")
        in_flight_lease = client.post("/v3/lease/grant", {"TTL": "600"})["ID"]
        ttl_lease = client.post("/v3/lease/grant", {"TTL": "3600"})["ID"]
        compact(client)
        size0, in_use0, rev0 = status(client)

        next_event = iter(range(args.events))
        lock = threading.Lock()
        errors = []

        def worker():
            c = Client(client_port)
            while True:
                with lock:
                    i = next(next_event, None)
                if i is None:
                    return
                try:
                    claim_and_complete(c, i, in_flight_lease, ttl_lease)
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(str(e))
                    return

        started = time.monotonic()
        threads = [threading.Thread(target=worker) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.monotonic() - started
        if errors:
            sys.exit(f"{len(errors)} errors, first: {errors[0]}")
        settle(client)
        size1, in_use1, rev1 = status(client)
        revisions = rev1 - rev0 - 1  # the settling put
        print(f"throughput: {args.events / took:.0f} events/s = {2 * args.events / took:.0f} txn/s "
              f"({args.clients} clients, {took:.1f} s)")
        print(f"before compaction: {revisions} revisions, in use +{in_use1 - in_use0} bytes "
              f"= {(in_use1 - in_use0) / revisions:.0f} bytes per revision (file {size1} bytes)")
        compact(client)
        _, in_use2, _ = status(client)
        print(f"after compaction: {args.events} live keys, in use +{in_use2 - in_use0} bytes "
              f"= {(in_use2 - in_use0) / args.events:.0f} bytes per live key")
        _, _, rev2 = status(client)
        client.post("/v3/lease/revoke", {"ID": ttl_lease})
        settle(client)
        _, in_use3, rev3 = status(client)
        print(f"ttl lease revoked (as on expiry): {rev3 - rev2 - 1} revision(s), in use +{in_use3 - in_use2} bytes "
              f"= {(in_use3 - in_use2) / args.events:.0f} bytes per deleted key until compaction")
        compact(client)
        size4, in_use4, _ = status(client)
        print(f"after compaction: in use +{in_use4 - in_use0} bytes; file {size4} bytes "
              "(bbolt keeps freed pages: only a defragmentation shrinks the file)")
        client.post("/v3/maintenance/defragment", {})
        size5, in_use5, _ = status(client)
        print(f"after defragmentation: file {size5} bytes, in use {in_use5} bytes")
    finally:
        etcd.kill()
        etcd.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
