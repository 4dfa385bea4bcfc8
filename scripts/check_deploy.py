#!/usr/bin/env python3
"""Checks that every shipped deployable in istio/ and envoy/ is true (issue 6).

Run by scripts/check-deploy.sh, which installs the pinned packages (deploy-requirements.txt) and
the tools (promtool, buildah) first. Each check prints one line; any failure exits non-zero.

* every YAML/JSON file under istio/ and envoy/ parses;
* every Istio resource validates against Istio's published CRD schemas
  (vendored in scripts/deploy-tests/istio-crds/, origin and licence in its README) with jsonschema, with the structural-schema
  semantics of the Kubernetes API server in strict field validation (unknown fields rejected unless
  the schema preserves them) and the schemas' CEL rules (x-kubernetes-validations) evaluated with
  cel-python; Kubernetes built-in kinds validate with kubernetes-validate (strict);
* deliberately broken copies of the shipped resources must FAIL that validation, each with the
  error expected (so the validator is proven to catch what it claims);
* roll-out safety: FAIL_OPEN for fetched modules, the EnvoyFilter rules of `istioctl analyze`
  (IST0151 priority, IST0152-IST0154 operations) and position (the STATS phase), Telemetry
  selector (IST0160), no IstioOperator overlay, both sides starting in metrics_only, the hash-policy
  EnvoyFilter's patch (MERGE, every entry terminal, outbound routes by virtual host); broken
  copies must be flagged;
* consistent hashing: the DestinationRule, the hash-policy EnvoyFilter, the consumer's
  dedup.headers and envoy/outbound.yaml agree, and the list Istio serves after the patch passes
  `envoy --mode validate` (a broken entry fails it);
* every meshguard configuration (WasmPlugin / TrafficExtension pluginConfig, EnvoyFilter JSON)
  passes `envoy --mode validate` with the real meshguard.wasm (which runs meshguard's
  on_configure), the EnvoyFilter's whole patched filter (failure_policy, reload_config) included,
  and a copy with an unknown key fails it;
* the alert rules and the dashboard's queries parse with promtool, the alert rules pass their
  promtool unit tests, and every metric they use is one meshguard exports (src/metrics.rs); the
  label names match the mesh and bootstrap tag settings;
* the Dockerfile puts the module at /plugin.wasm in a one-layer scratch image, and buildah builds
  it into an OCI layout that is checked against Istio's "compat" Wasm image format;
* envoy/docker-compose.yaml mounts existing bootstraps and the module, without port clashes;
* `meshguard validate` installs with the one documented command (`cargo install --locked --path .
  --features cli`), accepts every shipped Istio file and fails, naming file and JSON path, on a
  broken copy.
"""

import argparse
import copy
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
from pathlib import Path

import celpy
import jsonschema
import kubernetes_validate
import yaml
from celpy import celtypes

ROOT = Path(__file__).resolve().parent.parent
FAILURES = []


PASSED = []


def ok(message):
    PASSED.append(message)
    print(f"ok   {message}")


def fail(message):
    FAILURES.append(message)
    print(f"FAIL {message}")


def rel(path):
    return str(Path(path).resolve().relative_to(ROOT))


# ---------------------------------------------------------------------------------------------
# Parsing


def shipped_files():
    files = []
    for folder in ("istio", "envoy"):
        for path in sorted((ROOT / folder).iterdir()):
            if path.suffix in (".yaml", ".yml", ".json"):
                files.append(path)
    return files


def load_docs(path):
    text = path.read_text()
    if path.suffix == ".json":
        return [json.loads(text)]
    return [d for d in yaml.safe_load_all(text) if d is not None]


def check_parse():
    docs = {}
    for path in shipped_files():
        try:
            docs[path] = load_docs(path)
            ok(f"parses: {rel(path)} ({len(docs[path])} document(s))")
        except Exception as e:  # noqa: BLE001 - report any parser error as a failure
            fail(f"{rel(path)} does not parse: {e}")
    return docs


# ---------------------------------------------------------------------------------------------
# Istio CRD schemas with Kubernetes semantics

OBJECT_META = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
        "namespace": {"type": "string", "maxLength": 63, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "generateName": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    "additionalProperties": False,
}


def structural(schema):
    """An OpenAPI v3 CRD schema as a JSON Schema with the API server's semantics: objects with
    `properties` reject unknown fields (strict field validation, `kubectl apply` default) unless
    they carry x-kubernetes-preserve-unknown-fields; `nullable` admits null."""
    if isinstance(schema, list):
        return [structural(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: structural(v) for k, v in schema.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if schema.get("nullable") and "type" in schema:
        out["type"] = [schema["type"], "null"]
    return out


def load_crds(path):
    crds = {}
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc["spec"]
        for version in spec["versions"]:
            if not version.get("served", True):
                continue
            raw = version["schema"]["openAPIV3Schema"]
            schema = structural(raw)
            schema.setdefault("properties", {})
            schema["properties"]["apiVersion"] = {"const": f"{spec['group']}/{version['name']}"}
            schema["properties"]["kind"] = {"const": spec["names"]["kind"]}
            schema["properties"]["metadata"] = OBJECT_META
            schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
            schema["additionalProperties"] = False
            crds[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = (schema, raw)
    return crds


# Kubernetes' CEL URL library (isURL, url(...).getScheme()) used by the Istio CRDs, which
# cel-python does not have. isURL follows Go's url.ParseRequestURI: an absolute URI or path.
def _is_url(s):
    s = str(s)
    try:
        parts = urllib.parse.urlsplit(s)
    except ValueError:
        return celtypes.BoolType(False)
    valid = (bool(parts.scheme) and bool(parts.netloc or parts.path)) or s.startswith("/")
    return celtypes.BoolType(valid and not any(c in s for c in " \t\n"))


CEL_FUNCTIONS = {
    "isURL": _is_url,
    "url": lambda s: celtypes.StringType(str(s)),
    "getScheme": lambda u: celtypes.StringType(urllib.parse.urlsplit(str(u)).scheme),
}
CEL_ENV = celpy.Environment()
CEL_PROGRAMS = {}


def cel_errors(schema, value, path="spec"):
    """Evaluates the x-kubernetes-validations rules of `schema` and of its sub-schemas over
    `value` (walking properties, items and additionalProperties as the API server does)."""
    errors = []
    if value is None or not isinstance(schema, dict):
        return errors
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue  # transition rules need the stored object: not for a new resource
        program = CEL_PROGRAMS.get(rule["rule"])
        if program is None:
            program = CEL_ENV.program(CEL_ENV.compile(rule["rule"]), functions=CEL_FUNCTIONS)
            CEL_PROGRAMS[rule["rule"]] = program
        result = program.evaluate({"self": celpy.json_to_cel(value)})
        if result is not True and result != celtypes.BoolType(True):
            errors.append(f"{path}: {rule.get('message', rule['rule'])}")
    if isinstance(value, dict):
        for key, sub in value.items():
            if key in schema.get("properties", {}):
                errors += cel_errors(schema["properties"][key], sub, f"{path}.{key}")
            elif isinstance(schema.get("additionalProperties"), dict):
                errors += cel_errors(schema["additionalProperties"], sub, f"{path}.{key}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, sub in enumerate(value):
            errors += cel_errors(schema["items"], sub, f"{path}[{i}]")
    return errors


def istio_errors(crds, doc):
    """All schema and CEL errors of one resource; None when no published schema covers it."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key not in crds:
        return None
    schema, raw = crds[key]
    validator = jsonschema.Draft4Validator(schema)
    errors = []
    for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        where = ".".join(str(p) for p in e.absolute_path) or "(root)"
        errors.append(f"{where}: {e.message}")
    if not errors:
        errors += cel_errors(raw["properties"]["spec"], doc.get("spec"))
    return errors


def is_istio(doc):
    return isinstance(doc, dict) and str(doc.get("apiVersion", "")).split("/")[0].endswith("istio.io")


def check_schemas(docs, crds):
    for path, items in docs.items():
        if path.parent.name != "istio":
            continue
        for doc in items:
            if not isinstance(doc, dict) or "kind" not in doc:
                continue
            name = f"{rel(path)} {doc['kind']}/{doc.get('metadata', {}).get('name', '?')}"
            if is_istio(doc):
                errors = istio_errors(crds, doc)
                if errors is None:
                    if doc["kind"] == "IstioOperator":
                        # The operator's schema is not among the published CRDs; its meshConfig
                        # keys are cross-checked in check_stat_settings.
                        ok(f"{name}: no published CRD schema (install-time overlay); stats keys checked below")
                    else:
                        fail(f"{name}: no CRD schema for {doc.get('apiVersion')} {doc['kind']}")
                elif errors:
                    fail(f"{name}: " + "; ".join(errors))
                else:
                    ok(f"{name}: valid against the Istio CRD schema (strict fields, CEL rules)")
            else:
                try:
                    kubernetes_validate.validate(doc, "1.33", strict=True)
                    ok(f"{name}: valid Kubernetes {doc['apiVersion']} (kubernetes-validate, strict)")
                except Exception as e:  # noqa: BLE001
                    fail(f"{name}: {e}")


def mutate(doc, path, value):
    """A copy of `doc` with `path` (list of keys/indexes) set to `value`; a DELETE value removes it."""
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


DELETE = object()

# (file, description, path, value, a piece of the expected error)
BROKEN = [
    ("wasmplugin-outbound.yaml", "failStrategy not in the enum", ["spec", "failStrategy"], "FAIL_SOMETIMES", "spec.failStrategy: 'FAIL_SOMETIMES' is not one of"),
    ("wasmplugin-outbound.yaml", "misspelt field pluginconfig", ["spec", "pluginconfig"], {}, "Additional properties are not allowed ('pluginconfig'"),
    ("wasmplugin-outbound.yaml", "match mode INBOUND (not a mode)", ["spec", "match", 0, "mode"], "INBOUND", "spec.match.0.mode: 'INBOUND' is not one of"),
    ("wasmplugin-outbound.yaml", "phase as a number", ["spec", "phase"], 2, "spec.phase: 2 is not of type 'string'"),
    ("wasmplugin-outbound.yaml", "selector and targetRefs together (CEL)", ["spec", "targetRefs"], [{"kind": "Service", "name": "x"}], "only one of targetRefs or selector can be set"),
    ("wasmplugin-inbound.yaml", "url with an ftp scheme (CEL)", ["spec", "url"], "ftp://example.com/meshguard.wasm", "url must have schema one of"),
    ("wasmplugin-inbound.yaml", "sha256 that is not a digest", ["spec", "sha256"], "latest", "spec.sha256: 'latest' does not match"),
    ("wasmplugin-inbound.yaml", "no url", ["spec", "url"], DELETE, "'url' is a required property"),
    ("trafficextension-outbound.yaml", "pluginConfig outside wasm (WasmPlugin layout)", ["spec", "pluginConfig"], {}, "Additional properties are not allowed ('pluginConfig'"),
    ("trafficextension-outbound.yaml", "failStrategy FAIL_RELOADED", ["spec", "wasm", "failStrategy"], "FAIL_RELOADED", "spec.wasm.failStrategy: 'FAIL_RELOADED' is not one of"),
    ("envoyfilter-outbound.yaml", "patch operation INSERT_BEFOR", ["spec", "configPatches", 0, "patch", "operation"], "INSERT_BEFOR", "'INSERT_BEFOR' is not one of"),
    ("envoyfilter-inbound.yaml", "context SIDECAR_INBOUNDS", ["spec", "configPatches", 0, "match", "context"], "SIDECAR_INBOUNDS", "'SIDECAR_INBOUNDS' is not one of"),
    ("envoyfilter-hash-policy.yaml", "applyTo HTTP_ROUTES", ["spec", "configPatches", 0, "applyTo"], "HTTP_ROUTES", "'HTTP_ROUTES' is not one of"),
    ("envoyfilter-hash-policy.yaml", "workloadSelector with matchLabels (WasmPlugin layout)", ["spec", "workloadSelector", "matchLabels"], {"app": "checkout"}, "Additional properties are not allowed ('matchLabels'"),
    ("destinationrule-event-id.yaml", "misspelt httpHeaderNme", ["spec", "trafficPolicy", "loadBalancer", "consistentHash", "httpHeaderNme"], "x-event-id", "Additional properties are not allowed ('httpHeaderNme'"),
    ("telemetry-access-log.yaml", "provider without a name", ["spec", "accessLogging", 0, "providers", 0], {}, "'name' is a required property"),
    ("wasmplugin-outbound.yaml", "wrong apiVersion", ["apiVersion"], "extensions.istio.io/v1", "no CRD schema"),
]


def check_broken_copies(crds):
    for file, what, path, value, expected in BROKEN:
        doc = load_docs(ROOT / "istio" / file)[0]
        broken = mutate(doc, path, value)
        errors = istio_errors(crds, broken)
        errors = ["no CRD schema"] if errors is None else errors
        caught = [e for e in errors if expected in e]
        if caught:
            ok(f"broken copy rejected: {file} with {what}: {caught[0]}")
        else:
            fail(f"broken copy NOT rejected as expected: {file} with {what} (expected {expected!r}, got {errors})")


# ---------------------------------------------------------------------------------------------
# Roll-out safety: what Istio's own analyzers and the failure-mode reasoning of docs/deploy.md ask


RELATIVE_OPS = ("INSERT_BEFORE", "INSERT_AFTER", "REPLACE", "REMOVE")
ROUTE_CLASS = ("ROUTE_CONFIGURATION", "HTTP_ROUTE")
REPLACEABLE = ("NETWORK_FILTER", "HTTP_FILTER", "VIRTUAL_HOST")


def analyzer_errors(spec):
    """The EnvoyFilter rules of `istioctl analyze` (istio/istio 1.31.0-rc.0
    pkg/config/analysis/analyzers/envoyfilter/envoyfilter.go, codes in pkg/config/analysis/msg/messages.yaml):
    IST0153 ADD and IST0154 REMOVE on a route-class object (ignored by istiod), IST0152 REPLACE
    outside NETWORK_FILTER / HTTP_FILTER / VIRTUAL_HOST, IST0151 any other relative operation
    (INSERT_BEFORE/AFTER, REPLACE, REMOVE) without a priority."""
    errors = []
    for i, patch in enumerate(spec.get("configPatches", [])):
        op, apply_to = patch.get("patch", {}).get("operation"), patch.get("applyTo")
        if op == "ADD" and apply_to in ROUTE_CLASS:
            errors.append(f"configPatches[{i}]: IST0153 ADD on {apply_to} is ignored")
        elif op == "REMOVE" and apply_to in ROUTE_CLASS:
            errors.append(f"configPatches[{i}]: IST0154 REMOVE on {apply_to} is ignored")
        elif op == "REPLACE" and apply_to not in REPLACEABLE:
            errors.append(f"configPatches[{i}]: IST0152 REPLACE is not valid for {apply_to}")
        elif op in RELATIVE_OPS and not spec.get("priority"):
            errors.append(f"configPatches[{i}]: IST0151 relative operation {op} without spec.priority")
    return errors


def hash_policy_errors(spec):
    """An HTTP_ROUTE patch that sets a hash policy (istio/envoyfilter-hash-policy.yaml) must give
    the result its comments derive: appended to Istio's own entry (MERGE: MERGE_AND_REPLACE_LIST
    exists only from Istio 1.31, istio/api networking/v1alpha3/envoy_filter.proto), each entry
    terminal (envoyproxy/envoy source/common/http/hash_policy.cc: without it the hashes of all
    present headers are combined), on the callers' outbound routes that forward, selected by
    virtual host name and without portNumber (a sniffed port's route configuration is named
    `<host>:<port>`, which a portNumber match never matches: istio/istio
    pilot/pkg/networking/core/envoyfilter/rc_patch.go, getListenerPortFromName)."""
    errors = []
    for i, patch in enumerate(spec.get("configPatches", [])):
        value = patch.get("patch", {}).get("value") or {}
        entries = (value.get("route") or {}).get("hash_policy")
        if patch.get("applyTo") != "HTTP_ROUTE" or entries is None:
            continue
        where = f"configPatches[{i}]"
        op = patch.get("patch", {}).get("operation")
        if op != "MERGE":
            errors.append(f"{where}: operation {op}, not MERGE (the appended list of the comments; "
                          "MERGE_AND_REPLACE_LIST needs Istio 1.31)")
        for j, entry in enumerate(entries):
            if entry.get("terminal") is not True:
                errors.append(f"{where}: hash_policy[{j}] is not terminal: present headers would be combined")
        match = patch.get("match", {})
        rc = match.get("routeConfiguration", {})
        if match.get("context") != "SIDECAR_OUTBOUND":
            errors.append(f"{where}: context {match.get('context')}, not SIDECAR_OUTBOUND (the callers' routes)")
        if "portNumber" in rc:
            errors.append(f"{where}: portNumber never matches the route configuration of a sniffed port")
        if not (rc.get("vhost") or {}).get("name"):
            errors.append(f"{where}: no vhost name: every service of the port would be hashed")
        if ((rc.get("vhost") or {}).get("route") or {}).get("action") != "ROUTE":
            errors.append(f"{where}: vhost.route.action is not ROUTE: a redirect or direct response "
                          "would become a route action without a cluster")
    return errors


def rollout_errors(doc):
    """Problems of one resource that `istioctl analyze` or docs/deploy.md would flag."""
    kind, spec, errors = doc.get("kind"), doc.get("spec") or {}, []
    if kind in ("WasmPlugin", "TrafficExtension"):
        wasm = spec if kind == "WasmPlugin" else spec.get("wasm") or {}
        url = wasm.get("url", "")
        # A module Istio's agent cannot fetch becomes a deny-all filter unless FAIL_OPEN
        # (istio/istio pkg/wasm/convert.go); file:// modules are not fetched.
        if not url.startswith("file://") and wasm.get("failStrategy", "FAIL_CLOSE") != "FAIL_OPEN":
            errors.append(f"failStrategy {wasm.get('failStrategy', 'FAIL_CLOSE (default)')} with {url}: "
                          "a failed fetch answers every request with 403 (docs/deploy.md \"Failure strategy\")")
    if kind == "EnvoyFilter":
        errors += analyzer_errors(spec) + hash_policy_errors(spec)
        for i, patch in enumerate(spec.get("configPatches", [])):
            op = patch.get("patch", {}).get("operation")
            value = patch.get("patch", {}).get("value", {})
            if value.get("typed_config", {}).get("@type") == WASM_FILTER:
                sub = patch.get("match", {}).get("listener", {}).get("filterChain", {}).get("filter", {}).get("subFilter", {})
                if op != "INSERT_BEFORE" or sub.get("name") != "envoy.filters.http.grpc_stats":
                    errors.append(f"configPatches[{i}]: not INSERT_BEFORE envoy.filters.http.grpc_stats, "
                                  "the place of the STATS plugin phase")
                policy = value["typed_config"].get("config", {}).get("failure_policy")
                if policy != "FAIL_OPEN":
                    errors.append(f"configPatches[{i}]: failure_policy {policy}, not FAIL_OPEN")
    if kind == "Telemetry" and not (spec.get("selector") or {}).get("matchLabels") and not spec.get("targetRefs"):
        # IST0160 when a namespace already has a selector-less Telemetry
        # (pkg/config/analysis/analyzers/telemetry/default_selector.go).
        errors.append("no selector: a second selector-less Telemetry in a namespace is IST0160")
    if kind == "IstioOperator":
        errors.append("an IstioOperator overlay: `istioctl install -f` with it reverts the rest of the installation")
    return errors


def check_rollout_safety(docs):
    for path, items in docs.items():
        if path.parent.name != "istio":
            continue
        for doc in items:
            if not isinstance(doc, dict) or "kind" not in doc:
                continue
            name = f"{rel(path)} {doc['kind']}/{doc.get('metadata', {}).get('name', '?')}"
            errors = rollout_errors(doc)
            if errors:
                fail(f"{name}: " + "; ".join(errors))
            elif doc["kind"] in ("WasmPlugin", "TrafficExtension", "EnvoyFilter", "Telemetry"):
                ok(f"{name}: roll-out safe (failure strategy, analyzer rules IST0151-IST0154/IST0160, "
                   "filter position, hash policy)")
    # The roll-out starts passive on both sides.
    for label, config, _ in plugin_configs(docs):
        modes = {section: (config.get(section) or {}).get("mode") for section in ("circuit_breaker", "dedup")}
        if "inbound" in label and modes["dedup"] != "metrics_only":
            fail(f"{label}: dedup.mode {modes['dedup']!r}: the shipped consumer side starts in metrics_only")
        if "outbound" in label and modes["circuit_breaker"] != "metrics_only":
            fail(f"{label}: circuit_breaker.mode {modes['circuit_breaker']!r}: the shipped caller side starts in metrics_only")
    ok("the shipped plugins start in metrics_only (breaker on the caller's side, dedup on the consumer's)")
    # The checks can fail: broken copies of the shipped files.
    cases = [
        ("envoyfilter-inbound.yaml", ["spec", "priority"], DELETE, "IST0151"),
        ("envoyfilter-outbound.yaml", ["spec", "configPatches", 0, "match", "listener", "filterChain", "filter",
                                       "subFilter", "name"], "envoy.filters.http.router", "grpc_stats"),
        ("telemetry-access-log.yaml", ["spec", "selector"], DELETE, "IST0160"),
        ("wasmplugin-outbound.yaml", ["spec", "failStrategy"], "FAIL_RELOAD", "403"),
        ("trafficextension-inbound.yaml", ["spec", "wasm", "failStrategy"], DELETE, "403"),
        ("envoyfilter-hash-policy.yaml", ["spec", "configPatches", 0, "patch", "value", "route", "hash_policy", 0,
                                          "terminal"], DELETE, "not terminal"),
        ("envoyfilter-hash-policy.yaml", ["spec", "configPatches", 0, "patch", "operation"], "MERGE_AND_REPLACE_LIST",
         "not MERGE"),
        ("envoyfilter-hash-policy.yaml", ["spec", "configPatches", 0, "patch", "operation"], "ADD", "IST0153"),
        ("envoyfilter-hash-policy.yaml", ["spec", "configPatches", 0, "patch", "operation"], "REMOVE", "IST0154"),
        ("envoyfilter-hash-policy.yaml", ["spec", "configPatches", 0, "patch", "operation"], "REPLACE", "IST0152"),
        ("envoyfilter-hash-policy.yaml", ["spec", "configPatches", 0, "match", "routeConfiguration", "portNumber"],
         8080, "portNumber"),
        ("envoyfilter-hash-policy.yaml", ["spec", "configPatches", 0, "match", "routeConfiguration", "vhost",
                                          "route"], DELETE, "not ROUTE"),
    ]
    for file, path, value, expected in cases:
        broken = mutate(load_docs(ROOT / "istio" / file)[0], path, value)
        caught = [e for e in rollout_errors(broken) if expected in e]
        if caught:
            ok(f"broken copy flagged: {file} with {'.'.join(map(str, path))} {'removed' if value is DELETE else value}: {caught[0]}")
        else:
            fail(f"broken copy NOT flagged: {file} with {path} = {value} (expected {expected!r})")


# ---------------------------------------------------------------------------------------------
# meshguard configurations in a real Envoy (validate mode runs the plugin's on_configure)

WASM_FILTER = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"


def plugin_configs(docs):
    """(label, config dict, the EnvoyFilter's patched filter or None) of every shipped plugin."""
    found = []
    for path, items in docs.items():
        if path.parent.name != "istio":
            continue
        for doc in items:
            if not isinstance(doc, dict):
                continue
            label = f"{rel(path)} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            if doc.get("kind") == "WasmPlugin":
                found.append((label, doc["spec"]["pluginConfig"], None))
            elif doc.get("kind") == "TrafficExtension":
                found.append((label, doc["spec"]["wasm"]["pluginConfig"], None))
            elif doc.get("kind") == "EnvoyFilter":
                for patch in doc["spec"]["configPatches"]:
                    value = patch["patch"]["value"]
                    if value.get("typed_config", {}).get("@type") == WASM_FILTER:
                        text = value["typed_config"]["config"]["configuration"]["value"]
                        found.append((label, json.loads(text), value))
    return found


def bootstrap_with(filter_value, wasm):
    """envoy/envoy.yaml with its meshguard filter replaced by `filter_value` (module: `wasm`)."""
    bootstrap = yaml.safe_load((ROOT / "envoy" / "envoy.yaml").read_text())
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    value = copy.deepcopy(filter_value)
    value["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = str(wasm)
    hcm["http_filters"] = [value] + [f for f in hcm["http_filters"] if f["name"] != "meshguard"]
    return bootstrap


def meshguard_filter(config, wasm):
    return {
        "name": "meshguard",
        "typed_config": {
            "@type": WASM_FILTER,
            "config": {
                "name": "meshguard",
                "root_id": "meshguard",
                "vm_config": {"runtime": "envoy.wasm.runtime.v8", "code": {"local": {"filename": str(wasm)}}},
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": json.dumps(config),
                },
            },
        },
    }


def envoy_validate(bootstrap, workdir):
    path = Path(workdir) / f"bootstrap-{len(os.listdir(workdir))}.json"
    path.write_text(json.dumps(bootstrap))
    run = subprocess.run(
        ["envoy", "--mode", "validate", "-c", str(path), "--log-level", "critical"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    return run.returncode == 0, (run.stdout + run.stderr).strip()


def check_plugin_configs(docs, wasm, workdir):
    configs = plugin_configs(docs)
    if len(configs) < 6:
        fail(f"expected the outbound and inbound WasmPlugin, TrafficExtension and EnvoyFilter, found {len(configs)}")
    for label, config, patched in configs:
        # The default trace mode follows Envoy's tracer when there is one and writes W3C context
        # when there is none (trace.mode "auto", docs/behaviour.md; Istio has no tracer by default since 1.22).
        if "mode" in config.get("trace", {}):
            fail(f"{label}: trace.mode is set ({config['trace']['mode']!r}): leave it to the default (docs/deploy.md)")
        valid, log = envoy_validate(bootstrap_with(meshguard_filter(config, wasm), wasm), workdir)
        (ok if valid else fail)(f"{label}: pluginConfig {'accepted' if valid else 'REFUSED'} by envoy --mode validate"
                                + ("" if valid else f": {log[-800:]}"))
        if patched is not None:
            valid, log = envoy_validate(bootstrap_with(patched, wasm), workdir)
            (ok if valid else fail)(f"{label}: the patched filter (failure_policy) "
                                    + ("validates" if valid else f"is REFUSED: {log[-800:]}"))
    # The check can fail: an unknown key makes meshguard refuse to start, and Envoy with it.
    label, config, _ = configs[0]
    broken = dict(config, circuit_breakers={})
    valid, log = envoy_validate(bootstrap_with(meshguard_filter(broken, wasm), wasm), workdir)
    if valid:
        fail(f"{label} with an unknown key passed envoy --mode validate: the check proves nothing")
    else:
        ok(f"broken copy rejected: {label} with an unknown key `circuit_breakers`: Envoy fails to create the plugin")


# ---------------------------------------------------------------------------------------------
# Consistent hashing: the DestinationRule, the hash-policy EnvoyFilter and envoy/outbound.yaml agree


def hash_route_bootstrap(hash_policy, ring_size):
    """A bootstrap with one route carrying `hash_policy` to a RING_HASH cluster (as Istio builds
    the consumer's cluster from the DestinationRule: pilot/pkg/networking/core/cluster_traffic_policy.go)."""
    return {
        "static_resources": {
            "listeners": [{
                "name": "outbound", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "outbound",
                        "route_config": {"virtual_hosts": [{"name": "consumer", "domains": ["*"], "routes": [{
                            "match": {"prefix": "/"}, "route": {"cluster": "consumer", "hash_policy": hash_policy}}]}]},
                        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                    }}]}],
            }],
            "clusters": [{
                "name": "consumer", "type": "STATIC", "connect_timeout": "1s", "lb_policy": "RING_HASH",
                "ring_hash_lb_config": {"minimum_ring_size": ring_size},
                "load_assignment": {"cluster_name": "consumer", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
                    for p in (18081, 18082, 18083)]}]},
            }],
        },
    }


def check_hash_policy(docs, workdir):
    """tests/hash_policy.rs runs these lists in Envoy with three endpoints; here: the files agree,
    and the list Istio serves after the patch (its own non-terminal entry for the DestinationRule's
    header, istio/istio pilot/pkg/networking/core/route/route.go ConsistentHashToHashPolicy, then the
    patch's entries appended by MERGE, pkg/proto/merge/merge.go mergeList) passes envoy --mode validate."""
    dr = docs[ROOT / "istio" / "destinationrule-event-id.yaml"][0]
    ef = docs[ROOT / "istio" / "envoyfilter-hash-policy.yaml"][0]
    inbound = docs[ROOT / "istio" / "wasmplugin-inbound.yaml"][0]
    outbound = docs[ROOT / "envoy" / "outbound.yaml"][0]
    consistent = dr["spec"]["trafficPolicy"]["loadBalancer"]["consistentHash"]
    ring_size = consistent["ringHash"]["minimumRingSize"]
    patch = next(p for p in ef["spec"]["configPatches"] if p["applyTo"] == "HTTP_ROUTE")
    entries = patch["patch"]["value"]["route"]["hash_policy"]
    headers = [e["header"]["header_name"] for e in entries]
    consumer = inbound["spec"]["pluginConfig"]["dedup"]["headers"]
    problems = []
    if headers != consumer:
        problems.append(f"EnvoyFilter headers {headers} are not the consumer's dedup.headers {consumer}")
    if consistent.get("httpHeaderName") != consumer[0]:
        problems.append(f"DestinationRule hashes on {consistent.get('httpHeaderName')}, the consumer keys on {consumer[0]} first")
    vhost = patch["match"]["routeConfiguration"]["vhost"]["name"]
    if not re.fullmatch(re.escape(dr["spec"]["host"]) + r":\d+", vhost):
        problems.append(f"EnvoyFilter vhost {vhost} is not <{dr['spec']['host']}>:<port>")
    hcm = outbound["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    route = next(r for r in hcm["route_config"]["virtual_hosts"][0]["routes"] if r["name"] == "orders-events")
    cluster = next(c for c in outbound["static_resources"]["clusters"] if c["name"] == route["route"]["cluster"])
    if route["route"].get("hash_policy") != entries:
        problems.append(f"envoy/outbound.yaml hash_policy {route['route'].get('hash_policy')} differs from the EnvoyFilter's")
    if cluster.get("lb_policy") != "RING_HASH" or cluster.get("ring_hash_lb_config", {}).get("minimum_ring_size") != ring_size:
        problems.append(f"envoy/outbound.yaml cluster {cluster['name']}: {cluster.get('lb_policy')}, not RING_HASH "
                        f"with the DestinationRule's ring size {ring_size}")
    if problems:
        fail("consistent hashing: " + "; ".join(problems))
    else:
        ok(f"consistent hashing: DestinationRule, EnvoyFilter and envoy/outbound.yaml agree on {headers} "
           f"(the consumer's dedup.headers), ring hash of {ring_size}")
    served = [{"header": {"header_name": consistent["httpHeaderName"]}}] + entries
    valid, log = envoy_validate(hash_route_bootstrap(served, ring_size), workdir)
    (ok if valid else fail)(f"envoyfilter-hash-policy.yaml: the route list after Istio's MERGE ({len(served)} entries) "
                            + ("passes envoy --mode validate" if valid else f"is REFUSED: {log[-800:]}"))
    broken = served + [{"header": {"header_name": ""}, "terminal": True}]
    valid, _ = envoy_validate(hash_route_bootstrap(broken, ring_size), workdir)
    (fail if valid else ok)("broken copy " + ("NOT rejected" if valid else "rejected")
                            + " by envoy --mode validate: a hash_policy entry with an empty header name")


# ---------------------------------------------------------------------------------------------
# Stats, alerts, dashboard


def exported_metrics():
    text = (ROOT / "src" / "metrics.rs").read_text()
    names = set(re.findall(r'pub const [A-Z_]+: &str = "(meshguard_[a-z_]+)";', text))
    if len(names) < 10:
        fail(f"src/metrics.rs: found only {sorted(names)}")
    return names


METRIC_RE = re.compile(r"\bmeshguard_[a-z_]+\b")
LABELS = {"rule", "to", "outcome"}
# What Istio's sample scrape configuration attaches to a pod's series (samples/addons/prometheus.yaml:
# namespace, pod, and the pod's labels, among them the canonical name sidecar injection sets).
SCRAPE_LABELS = {"namespace", "pod", "service_istio_io_canonical_name"}
# Labels of Istio's own metrics the rules use: istio_requests_total (istio/proxy
# testdata/metric/client_request_total.yaml.tmpl), the agent's result and istiod's type.
ISTIO_LABELS = {"reporter", "response_code", "response_flags", "result", "type"}


def check_exprs(where, exprs, metrics):
    used = set()
    for expr in exprs:
        # Rules of different workloads share names (health, default, …), and a circuit or store
        # belongs to one pod: every aggregation keeps the namespace and the workload (or pod).
        for grouping in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            labels = {l.strip() for l in grouping.split(",")}
            if METRIC_RE.search(expr) and not ({"namespace"} <= labels and labels & {"service_istio_io_canonical_name", "pod"}):
                fail(f"{where}: `by ({grouping})` mixes workloads: {expr!r}")
        # A histogram's series: <name>_bucket, _sum and _count.
        names = {re.sub(r"_(bucket|sum|count)$", "", n) if re.sub(r"_(bucket|sum|count)$", "", n) in metrics else n
                 for n in METRIC_RE.findall(expr)}
        unknown = names - metrics
        if unknown:
            fail(f"{where}: unknown metric(s) {sorted(unknown)} in {expr!r}")
        used |= names
        for label in re.findall(r"\b(rule|to|outcome|[a-z_]+)\s*(?:=~|!=|!~|=)\s*\"", expr):
            if label not in LABELS | SCRAPE_LABELS | ISTIO_LABELS:
                fail(f"{where}: label {label!r} is neither a meshguard tag nor a scrape label: {expr!r}")
    return used


def promtool(*args):
    run = subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=ROOT, timeout=120)
    return run.returncode == 0, (run.stdout + run.stderr).strip()


def check_alerts(metrics):
    path = ROOT / "istio" / "prometheus-rules.yaml"
    good, out = promtool("check", "rules", str(path))
    (ok if good else fail)(f"promtool check rules {rel(path)}" + ("" if good else f": {out}"))
    good, out = promtool("test", "rules", str(ROOT / "scripts" / "deploy-tests" / "prometheus-rules.test.yaml"))
    (ok if good else fail)("promtool test rules scripts/deploy-tests/prometheus-rules.test.yaml" + ("" if good else f": {out}"))
    rules = yaml.safe_load(path.read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    alerts = {r.get("alert") for g in rules["groups"] for r in g["rules"]}
    for needed in ("MeshguardCircuitOpen", "MeshguardDuplicateRateHigh", "MeshguardInternalErrors"):
        if needed not in alerts:
            fail(f"{rel(path)}: alert {needed} missing")
    used = check_exprs(rel(path), exprs, metrics)
    needed = {"MeshguardModuleFetchFailed", "MeshguardConfigRejected", "MeshguardFilterConfigMissing", "MeshguardNotRunning"}
    if needed - alerts:
        fail(f"{rel(path)}: the roll-out failure modes lack alerts {sorted(needed - alerts)}")
    critical = {r["alert"] for g in rules["groups"] for r in g["rules"] if r.get("labels", {}).get("severity") == "critical"}
    if any(name.startswith("MeshguardCircuit") for name in critical):
        fail(f"{rel(path)}: a circuit alert is critical ({sorted(critical)}): metrics do not tell enforce from metrics_only")
    ok(f"{rel(path)}: {len(exprs)} alerts, meshguard metrics used {sorted(used)} all exported by meshguard; "
       f"critical only {sorted(critical)}")


def check_dashboard(metrics, workdir):
    path = ROOT / "istio" / "grafana-dashboard.json"
    dash = json.loads(path.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    # Grafana's variables, as Grafana substitutes them, so that promtool can parse the queries.
    variables = {v["name"] for v in dash["templating"]["list"]}
    for needed in ("datasource", "namespace", "workload", "rule"):
        if needed not in variables:
            fail(f"{rel(path)}: no dashboard variable {needed!r}")
    concrete = [re.sub(r'"\$[a-z]+"', '".*"', e.replace("$__rate_interval", "5m")) for e in exprs]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"meshguard:dashboard_query_{i}", "expr": e} for i, e in enumerate(concrete)]}]}
    rules_path = Path(workdir) / "dashboard-queries.rules.yaml"
    rules_path.write_text(yaml.safe_dump(rules))
    good, out = promtool("check", "rules", str(rules_path))
    (ok if good else fail)(f"{rel(path)}: {len(exprs)} queries parse with promtool" + ("" if good else f": {out}"))
    used = check_exprs(rel(path), exprs, metrics)
    missing = metrics - used
    if missing:
        fail(f"{rel(path)}: no panel shows {sorted(missing)}")
    else:
        ok(f"{rel(path)}: every exported metric has a panel ({len(metrics)} metrics)")
    for panel in dash["panels"]:
        if panel["type"] != "row" and panel.get("datasource", {}).get("uid") != "${datasource}":
            fail(f"{rel(path)}: panel {panel['title']!r} does not use the datasource variable")


# Istio's default stats inclusion of a sidecar (istio/istio 1.31.0-rc.0 pkg/bootstrap/config.go and
# tools/packaging/common/envoy_bootstrap.json); tests/deploy.rs runs the same list in Envoy 1.40.
ISTIO_DEFAULT_STAT_PREFIXES = ("reporter=", "cluster_manager", "listener_manager", "server", "cluster.xds-grpc",
                               "wasm", "component", "istio")


def check_stat_settings(docs, metrics):
    mesh = docs[ROOT / "istio" / "mesh-config-values.yaml"][0]["meshConfig"]
    pod = docs[ROOT / "istio" / "pod-annotations.yaml"][0]
    proxy = yaml.safe_load(pod["spec"]["template"]["metadata"]["annotations"]["proxy.istio.io/config"])
    for where, cfg in (("mesh-config-values.yaml meshConfig.defaultConfig", mesh["defaultConfig"]),
                       ("pod-annotations.yaml proxy.istio.io/config", proxy)):
        tags = set(cfg.get("extraStatTags", []))
        if tags != LABELS:
            fail(f"{where}: extraStatTags {sorted(tags)} != meshguard's tags {sorted(LABELS)}")
        elif "proxyStatsMatcher" in cfg:
            fail(f"{where}: proxyStatsMatcher is not needed (Istio keeps `wasm…` stats by default) and replaces "
                 "nothing but adds a regex to every stat lookup: drop it")
        else:
            ok(f"{where}: extraStatTags {sorted(tags)}, no proxyStatsMatcher")
    # Envoy names a proxy-wasm metric `wasmcustom.<name>` (tags included): Istio's default
    # prefix `wasm` keeps every one of them.
    dropped = [m for m in metrics
               if not f"wasmcustom.rule=.=payments;.;{m}".startswith(ISTIO_DEFAULT_STAT_PREFIXES)]
    if dropped:
        fail(f"Istio's default stats inclusion would drop {dropped}")
    else:
        ok(f"Istio's default stats inclusion (prefix `wasm`) keeps all {len(metrics)} meshguard metrics")
    for path in sorted((ROOT / "envoy").glob("*.yaml")):
        bootstrap = docs[path][0]
        # w3c-mesh.yaml is the W3C suite's test mesh, not a deployable; it exports no tagged stats.
        if "static_resources" not in bootstrap or path.name == "w3c-mesh.yaml":
            continue
        tags = {t["tag_name"] for t in bootstrap.get("stats_config", {}).get("stats_tags", [])}
        if not LABELS <= tags:
            fail(f"{rel(path)}: stats_tags {sorted(tags)} lack {sorted(LABELS - tags)}")
        else:
            ok(f"{rel(path)}: stats_tags extract {sorted(LABELS)}")
    # The access log of the mesh shows the ids the shipped bootstraps show.
    labels = mesh["extensionProviders"][0]["envoyFileAccessLog"]["logFormat"]["labels"]
    fields = [v for v in labels.values() if "FILTER_STATE(wasm.meshguard." in v]
    if len(fields) < 7:
        fail(f"mesh-config-values.yaml: access log has only {fields}")
    else:
        ok(f"mesh-config-values.yaml: access log carries {len(fields)} meshguard filter-state fields")


# ---------------------------------------------------------------------------------------------
# OCI image


def check_dockerfile(wasm, workdir):
    path = ROOT / "istio" / "Dockerfile"
    lines = [l.strip() for l in path.read_text().splitlines() if l.strip() and not l.strip().startswith("#")]
    instructions = [l.split()[0].upper() for l in lines]
    copies = [l.split()[1:] for l in lines if l.upper().startswith("COPY")]
    if lines[:1] != ["FROM scratch"] or instructions.count("FROM") != 1:
        fail(f"{rel(path)}: must be a single-stage FROM scratch image, got {lines}")
    elif set(instructions) - {"FROM", "COPY", "LABEL", "ARG"} or len(copies) != 1:
        fail(f"{rel(path)}: the compat format allows one layer holding the module only: {lines}")
    elif copies[0][-1] not in ("plugin.wasm", "./plugin.wasm", "/plugin.wasm"):
        fail(f"{rel(path)}: the module must be copied to /plugin.wasm, not {copies[0][-1]}")
    else:
        ok(f"{rel(path)}: FROM scratch, one COPY to /plugin.wasm (Istio's compat Wasm image)")

    if not shutil.which("buildah"):
        fail("buildah is not installed (scripts/check-deploy.sh installs it)")
        return
    context = Path(workdir) / "oci-context"
    context.mkdir()
    shutil.copy(wasm, context / "meshguard.wasm")
    store = ["--root", str(Path(workdir) / "buildah-root"), "--runroot", str(Path(workdir) / "buildah-run"),
             "--storage-driver", "vfs"]
    layout = Path(workdir) / "oci-layout"
    started = time.monotonic()
    for cmd in (
        ["buildah", *store, "build", "--quiet", "--isolation", "chroot", "--format", "oci",
         "--annotation", "module.wasm.image/variant=compat", "-f", str(path), "-t", "localhost/meshguard:check",
         str(context)],
        ["buildah", *store, "push", "--quiet", "localhost/meshguard:check", f"oci:{layout}:check"],
    ):
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if run.returncode != 0:
            fail(f"{' '.join(cmd[:3])}: {run.stderr.strip()[-800:]}")
            return
    took = time.monotonic() - started
    index = json.loads((layout / "index.json").read_text())

    def blob(digest):
        return (layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes()

    manifest = json.loads(blob(index["manifests"][0]["digest"]))
    problems = []
    if manifest.get("annotations", {}).get("module.wasm.image/variant") != "compat":
        problems.append(f"manifest annotations {manifest.get('annotations')}")
    layers = manifest.get("layers", [])
    if len(layers) != 1 or layers[0]["mediaType"] != "application/vnd.oci.image.layer.v1.tar+gzip":
        problems.append(f"layers {[l['mediaType'] for l in layers]}")
    else:
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob(layers[0]["digest"])))) as tar:
            files = [m for m in tar.getmembers() if m.isfile()]
            names = [m.name.lstrip("./") for m in files]
            if names != ["plugin.wasm"]:
                problems.append(f"layer files {names}")
            else:
                data = tar.extractfile(files[0]).read()
                if hashlib.sha256(data).digest() != hashlib.sha256(Path(wasm).read_bytes()).digest():
                    problems.append("plugin.wasm differs from the built module")
    if problems:
        fail(f"OCI image of {rel(path)} is not Istio's compat format: {'; '.join(problems)}")
    else:
        ok(f"buildah built {rel(path)} in {took:.1f}s: one tar+gzip layer holding plugin.wasm (= the built module), "
           f"manifest annotated module.wasm.image/variant=compat, manifest digest {index['manifests'][0]['digest']}")


# ---------------------------------------------------------------------------------------------
# docker compose


def check_compose(docs):
    path = ROOT / "envoy" / "docker-compose.yaml"
    compose = docs[path][0]
    ports, base_ids = {}, {}
    for name, service in compose["services"].items():
        command = service["command"]
        config = command[command.index("-c") + 1]
        mounts = {}
        for volume in service["volumes"]:
            source, target = volume.split(":")[:2]
            host = (path.parent / source).resolve()
            mounts[target] = host
            if host.suffix == ".yaml" and not host.exists():
                fail(f"{rel(path)} {name}: mounts missing file {source}")
        if config not in mounts:
            fail(f"{rel(path)} {name}: bootstrap {config} is not mounted")
            continue
        bootstrap_path = mounts[config]
        bootstrap = yaml.safe_load(bootstrap_path.read_text())
        wasm_paths = re.findall(r"filename: (\S+\.wasm)", bootstrap_path.read_text())
        for w in wasm_paths:
            inside = str(Path(service["working_dir"]) / w)
            if inside not in mounts or mounts[inside] != (ROOT / w).resolve():
                fail(f"{rel(path)} {name}: module {w} is not mounted at {inside}")
        base_id = command[command.index("--base-id") + 1] if "--base-id" in command else "0"
        if base_id in base_ids:
            fail(f"{rel(path)} {name}: --base-id {base_id} also used by {base_ids[base_id]} (shared host network)")
        base_ids[base_id] = name
        bound = [bootstrap["admin"]["address"]["socket_address"]["port_value"]]
        bound += [l["address"]["socket_address"]["port_value"] for l in bootstrap["static_resources"]["listeners"]]
        for port in bound:
            if port in ports:
                fail(f"{rel(path)} {name}: port {port} also bound by {ports[port]}")
            ports[port] = name
    if not any(f.startswith(f"{rel(path)}") for f in FAILURES):
        ok(f"{rel(path)}: {len(compose['services'])} services, bootstraps and module mounted, ports {sorted(ports)} distinct")


# ---------------------------------------------------------------------------------------------
# meshguard validate, installed as a user installs it


def check_cli(docs, workdir):
    root, build = ROOT / "target" / "cli-root", ROOT / "target" / "cli-build"
    install = ["cargo", "install", "--locked", "--quiet", "--path", ".", "--features", "cli",
               "--root", str(root), "--target-dir", str(build)]
    started = time.monotonic()
    run = subprocess.run(install, capture_output=True, text=True, cwd=ROOT, timeout=900)
    if run.returncode != 0:
        fail(f"`cargo install --locked --path . --features cli` failed: {run.stderr.strip()[-800:]}")
        return
    binary = root / "bin" / "meshguard"
    ok(f"cargo install --locked --path . --features cli: {rel(binary)} ({time.monotonic() - started:.1f}s)")
    files = sorted(str(p) for p in (ROOT / "istio").glob("*.yaml"))
    run = subprocess.run([str(binary), "validate", *files], capture_output=True, text=True, cwd=ROOT, timeout=60)
    expected = len(plugin_configs(docs))
    summary = f"{expected} valid configurations, 0 errors"
    if run.returncode == 0 and summary in run.stdout:
        ok(f"meshguard validate istio/*.yaml: exit 0, {summary}")
    else:
        fail(f"meshguard validate istio/*.yaml: exit {run.returncode}, expected {summary!r}:\n{run.stdout}{run.stderr}")
    broken = Path(workdir) / "wasmplugin-inbound.yaml"
    text = (ROOT / "istio" / "wasmplugin-inbound.yaml").read_text()
    broken.write_text(text.replace("scope: caller", "scope: global", 1))
    run = subprocess.run([str(binary), "validate", str(broken)], capture_output=True, text=True, timeout=60)
    line = (f"{broken}: WasmPlugin orders/meshguard-inbound: spec.pluginConfig: dedup.scope: "
            'must be one of "rule", "caller", got "global"')
    if run.returncode == 1 and line in run.stdout.splitlines():
        ok("broken copy rejected by the installed meshguard validate: exit 1, file and JSON path named")
    else:
        fail(f"meshguard validate on a broken copy: exit {run.returncode}, expected the line {line!r}:\n{run.stdout}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wasm", default=str(ROOT / "target/wasm32-wasip1/release/meshguard.wasm"))
    parser.add_argument("--crds", default=str(ROOT / "scripts/deploy-tests/istio-crds/customresourcedefinitions.yaml"))
    args = parser.parse_args()
    wasm = Path(args.wasm).resolve()
    if not wasm.exists():
        sys.exit(f"{wasm} is missing: build it with `cargo build --release --target wasm32-wasip1`")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="meshguard-deploy-") as workdir:
        docs = check_parse()
        crds = load_crds(Path(args.crds))
        ok(f"loaded {len(crds)} Istio CRD schemas from {args.crds}")
        check_schemas(docs, crds)
        check_broken_copies(crds)
        check_rollout_safety(docs)
        check_plugin_configs(docs, wasm, workdir)
        check_hash_policy(docs, workdir)
        metrics = exported_metrics()
        check_alerts(metrics)
        check_dashboard(metrics, workdir)
        check_stat_settings(docs, metrics)
        check_dockerfile(wasm, workdir)
        check_compose(docs)
        check_cli(docs, workdir)
    took = time.monotonic() - started
    print(f"\ndeploy checks ({took:.1f}s):\n{len(PASSED)} passed, {len(FAILURES)} failed")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
