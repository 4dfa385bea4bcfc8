#!/usr/bin/env python3
"""Makes CloudEvents HTTP requests with the CloudEvents Python SDK (PyPI `cloudevents`, 2.x:
scripts/setup.sh installs it), for the integration tests of keys in the body (tests/body_keys.rs).

    python3 tests/support/cloudevents_http.py MODE EVENTS_JSON

MODE is `structured` (the SDK's `to_structured`), `binary` (`to_binary`) or `batch`. EVENTS_JSON
is a JSON array of events, each `{"source", "id", "type", "data"}` (`data` optional): one event
for `structured` and `binary`, any number for `batch`. The SDK has no batch encoder (2.2.0 has
none: no `to_structured_batch`, nothing about batches), so a batch is the JSON array of the
SDK's own structured-mode serialisations of the events, sent as
`application/cloudevents-batch+json` (CloudEvents JSON format §4, HTTP binding §3.3).

Prints the request's header lines (`name: value`, as the SDK made them), an empty line, then the
body, byte for byte. The caller adds the framing (`content-length`).
"""

import json
import sys

try:
    from cloudevents.core.bindings.http import to_binary, to_structured
    from cloudevents.core.formats.json import JSONFormat
    from cloudevents.core.v1.event import CloudEvent
except ImportError as e:  # 1.x has another API; the tests use the 2.x one
    sys.exit(f"cloudevents_http.py: the CloudEvents Python SDK 2.x is needed ({e}): run scripts/setup.sh")


def event(spec):
    attributes = {"source": spec["source"], "id": spec["id"], "type": spec.get("type", "com.example.test")}
    return CloudEvent(attributes=attributes, data=spec.get("data"))


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("structured", "binary", "batch"):
        sys.exit(__doc__)
    mode, events = sys.argv[1], [event(e) for e in json.loads(sys.argv[2])]
    fmt = JSONFormat()
    if mode == "batch":
        headers = {"content-type": "application/cloudevents-batch+json"}
        body = b"[" + b",".join(fmt.write(e) for e in events) + b"]"
    else:
        if len(events) != 1:
            sys.exit(f"{mode}: exactly one event, got {len(events)}")
        message = (to_structured if mode == "structured" else to_binary)(events[0], fmt)
        headers, body = message.headers, message.body
    out = sys.stdout.buffer
    for name, value in headers.items():
        out.write(f"{name}: {value}\n".encode())
    out.write(b"\n")
    out.write(body)
    out.flush()


if __name__ == "__main__":
    main()
