#!/usr/bin/env python3
"""A real gRPC server and client (Python grpcio) for the integration tests in tests/grpc.rs.

No protobuf: both sides use generic handlers on raw bytes. A request message is a JSON object
(UTF-8 bytes) that tells the server what to do:

    {"tag": "t1", "sleep_ms": 0, "messages": 0, "code": "OK", "details": "", "initial": false}

* `sleep_ms`: wait this long first (in small steps; stops early when the call is gone).
* `messages` (streaming method): send this many response messages before the status.
* `code`: the status to end with (a `grpc.StatusCode` name). Before any message and without
  `initial`, grpc-core sends it as a trailers-only response (one HEADERS frame with END_STREAM);
  after a message (or with `initial`: initial metadata sent first) it goes in the trailers.
* `fail_times`: end only the first `fail_times` calls with this `tag` with `code`, later ones OK
  (a service that recovers, for retries).

Methods (any service name): `.../Unary` (unary-unary) and `.../Stream` (unary-stream); any other
method name is unary too, so that tests can call "another method" of the same service.

    python3 grpc_peer.py server
        Prints {"port": N} once listening on 127.0.0.1, then one JSON line per event:
        {"event": "call", "method", "tag", "metadata": {...}} when a call reaches the server,
        {"event": "end", "method", "tag", "active": bool} when its handler returns.
        Exits when its standard input closes.

    python3 grpc_peer.py client '{"target": "127.0.0.1:N", "parallel": false, "calls": [CALL, ...]}'
        CALL: {"method": "/meshguard.test.Echo/Unary", "request": {...}, "metadata": [[k, v], ...],
               "timeout": seconds or null, "cancel_after_ms": ms or null,
               "cancel_after_messages": n or null, "start_ms": delay before the call (parallel)}
        Prints one JSON array: per call {"code": "OK", "code_value": 0, "details",
        "initial_metadata": {...}, "trailing_metadata": {...}, "messages": [...], "elapsed_ms"}.
        Calls run in order on one channel (one HTTP/2 connection), or all at once with "parallel".
"""

import json
import sys
import threading
import time
from concurrent import futures

import grpc

OUT_LOCK = threading.Lock()


def emit(obj):
    with OUT_LOCK:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def metadata_dict(pairs):
    out = {}
    for key, value in pairs or ():
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        out[key] = value
    return out


# ---------------------------------------------------------------------------------------- server


def parse_request(raw):
    try:
        return json.loads(raw.decode("utf-8")) if raw else {}
    except ValueError:
        return {}


def sleep_while_active(context, ms):
    deadline = time.monotonic() + ms / 1000.0
    while time.monotonic() < deadline and context.is_active():
        time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))


ATTEMPTS = {}
ATTEMPTS_LOCK = threading.Lock()


def attempt(tag):
    """The number of this call among the calls with `tag` (1 for the first)."""
    with ATTEMPTS_LOCK:
        ATTEMPTS[tag] = ATTEMPTS.get(tag, 0) + 1
        return ATTEMPTS[tag]


def finish(context, spec):
    code_name = spec.get("code", "OK")
    if "fail_times" in spec and attempt(spec.get("tag")) > spec["fail_times"]:
        code_name = "OK"
    if code_name != "OK":
        context.abort(getattr(grpc.StatusCode, code_name), spec.get("details", ""))


def unary(method):
    def handle(raw, context):
        spec = parse_request(raw)
        tag = spec.get("tag")
        emit({"event": "call", "method": method, "tag": tag, "metadata": metadata_dict(context.invocation_metadata())})
        try:
            sleep_while_active(context, spec.get("sleep_ms", 0))
            if spec.get("initial"):
                context.send_initial_metadata((("x-peer-initial", "1"),))
            finish(context, spec)
            return json.dumps({"tag": tag, "method": method}).encode()
        finally:
            emit({"event": "end", "method": method, "tag": tag, "active": context.is_active()})

    return grpc.unary_unary_rpc_method_handler(handle)


def stream(method):
    def handle(raw, context):
        spec = parse_request(raw)
        tag = spec.get("tag")
        emit({"event": "call", "method": method, "tag": tag, "metadata": metadata_dict(context.invocation_metadata())})
        try:
            sleep_while_active(context, spec.get("sleep_ms", 0))
            for i in range(spec.get("messages", 0)):
                if not context.is_active():
                    return
                yield json.dumps({"tag": tag, "i": i}).encode()
                sleep_while_active(context, spec.get("gap_ms", 0))
            finish(context, spec)
        finally:
            emit({"event": "end", "method": method, "tag": tag, "active": context.is_active()})

    return grpc.unary_stream_rpc_method_handler(handle)


class AnyMethod(grpc.GenericRpcHandler):
    def service(self, handler_call_details):
        method = handler_call_details.method
        return stream(method) if method.endswith("/Stream") else unary(method)


def serve():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=32))
    server.add_generic_rpc_handlers((AnyMethod(),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    emit({"port": port})
    # The test owns this process: it ends when the test closes stdin (or kills it).
    sys.stdin.read()
    server.stop(0)


# ---------------------------------------------------------------------------------------- client


def result_of(call, messages, started, error=None):
    source = error if error is not None else call
    code = source.code()
    return {
        "code": code.name,
        "code_value": code.value[0],
        "details": source.details(),
        "initial_metadata": metadata_dict(source.initial_metadata()),
        "trailing_metadata": metadata_dict(source.trailing_metadata()),
        "messages": messages,
        "elapsed_ms": (time.monotonic() - started) * 1000.0,
    }


def run_call(channel, spec):
    time.sleep(spec.get("start_ms", 0) / 1000.0)
    method = spec["method"]
    request = json.dumps(spec.get("request", {})).encode()
    metadata = [tuple(kv) for kv in spec.get("metadata", [])]
    timeout = spec.get("timeout")
    started = time.monotonic()
    if method.endswith("/Stream"):
        call = channel.unary_stream(method)(request, timeout=timeout, metadata=metadata)
        messages = []
        cancel_timer = None
        if spec.get("cancel_after_ms") is not None:
            cancel_timer = threading.Timer(spec["cancel_after_ms"] / 1000.0, call.cancel)
            cancel_timer.start()
        try:
            for message in call:
                messages.append(message.decode("utf-8", "replace"))
                if spec.get("cancel_after_messages") is not None and len(messages) >= spec["cancel_after_messages"]:
                    call.cancel()
                    break
        except grpc.RpcError:
            pass
        finally:
            if cancel_timer:
                cancel_timer.cancel()
        return result_of(call, messages, started)
    callable_ = channel.unary_unary(method)
    if spec.get("cancel_after_ms") is not None:
        future = callable_.future(request, timeout=timeout, metadata=metadata)
        time.sleep(spec["cancel_after_ms"] / 1000.0)
        future.cancel()
        try:
            future.result()
        except (grpc.RpcError, grpc.FutureCancelledError):
            pass
        return result_of(future, [], started)
    try:
        response, call = callable_.with_call(request, timeout=timeout, metadata=metadata)
        return result_of(call, [response.decode("utf-8", "replace")], started)
    except grpc.RpcError as error:
        return result_of(None, [], started, error)


def client(arg):
    spec = json.loads(arg)
    # Straight to the target: no proxy from the environment, no retries of grpc-core's own.
    options = [("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]
    with grpc.insecure_channel(spec["target"], options=options) as channel:
        calls = spec["calls"]
        if spec.get("parallel"):
            with futures.ThreadPoolExecutor(max_workers=len(calls)) as pool:
                results = list(pool.map(lambda c: run_call(channel, c), calls))
        else:
            results = [run_call(channel, c) for c in calls]
    print(json.dumps(results))


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "server":
        serve()
    elif len(sys.argv) == 3 and sys.argv[1] == "client":
        client(sys.argv[2])
    else:
        sys.stderr.write(__doc__)
        sys.exit(2)
