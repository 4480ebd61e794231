#!/usr/bin/env python3
"""Every Cascade pod can finish its shutdown before the kubelet kills it.

On SIGTERM a service keeps serving for `server.drain_delay_ms`, then gives
in-flight calls `server.shutdown_grace_ms`, then stops its outbox (at most
5 s: docs/kubernetes.md, "Shutdown and drain"). The three come from the
Deployment's ConfigMap, the limit from the Deployment, and schema validation
reads each object alone, so nothing else sees a grace period that a longer
drain outgrew. This reads them together: for each Deployment whose ConfigMap
sets CASCADE_<SERVICE>__SERVER__* values, drain + grace + 5 s must fit
terminationGracePeriodSeconds, and the grace must cover the longest request
(`server.request_timeout_ms`, 30 s by default), or a call that started just
before the listener closed is cut short.

Usage: k8s-shutdown.py RENDERED.yaml...
"""

import sys

import yaml

# The services' defaults (shared/chassis/src/settings.rs), for keys a
# ConfigMap leaves out.
DEFAULTS = {"DRAIN_DELAY_MS": 0, "SHUTDOWN_GRACE_MS": 30_000, "REQUEST_TIMEOUT_MS": 30_000}
# The outbox's stop after the grace: its calls in flight finish for up to
# 3 s, then it gives back the claims of any still running, 5 s in all.
OUTBOX_STOP_MS = 5_000
# Kubernetes' default when a Deployment sets none.
DEFAULT_TERMINATION_GRACE_S = 30


def server_setting(data, key):
    """CASCADE_<SERVICE>__SERVER__<KEY> from a ConfigMap, whatever the service."""
    for name, value in data.items():
        if name.startswith("CASCADE_") and name.endswith(f"__SERVER__{key}"):
            return int(value)
    return None


def check(path):
    with open(path) as f:
        objects = [o for o in yaml.safe_load_all(f) if o]
    config_maps = {
        (o["metadata"].get("namespace", "default"), o["metadata"]["name"]): o.get("data") or {}
        for o in objects
        if o["kind"] == "ConfigMap"
    }
    problems, checked = [], 0
    for o in objects:
        if o["kind"] != "Deployment":
            continue
        namespace = o["metadata"].get("namespace", "default")
        pod = o["spec"]["template"]["spec"]
        limit_ms = 1000 * pod.get("terminationGracePeriodSeconds", DEFAULT_TERMINATION_GRACE_S)
        for container in pod["containers"]:
            data = {}
            for source in container.get("envFrom") or []:
                ref = source.get("configMapRef")
                if ref:
                    data.update(config_maps.get((namespace, ref["name"]), {}))
            if server_setting(data, "SHUTDOWN_GRACE_MS") is None and server_setting(data, "DRAIN_DELAY_MS") is None:
                continue  # not a Cascade service's settings
            checked += 1
            value = {
                key: default if (setting := server_setting(data, key)) is None else setting
                for key, default in DEFAULTS.items()
            }
            name = f"{path}: Deployment/{o['metadata']['name']} container {container['name']}"
            needed_ms = value["DRAIN_DELAY_MS"] + value["SHUTDOWN_GRACE_MS"] + OUTBOX_STOP_MS
            if needed_ms > limit_ms:
                problems.append(
                    f"{name}: drain {value['DRAIN_DELAY_MS']} ms + grace {value['SHUTDOWN_GRACE_MS']} ms"
                    f" + outbox stop {OUTBOX_STOP_MS} ms = {needed_ms} ms, more than"
                    f" terminationGracePeriodSeconds ({limit_ms // 1000} s)"
                )
            if value["SHUTDOWN_GRACE_MS"] < value["REQUEST_TIMEOUT_MS"]:
                problems.append(
                    f"{name}: shutdown grace {value['SHUTDOWN_GRACE_MS']} ms is shorter than the request"
                    f" timeout {value['REQUEST_TIMEOUT_MS']} ms: a call in flight may be cut short"
                )
    return problems, checked


def main():
    failed = False
    for path in sys.argv[1:]:
        problems, checked = check(path)
        for p in problems:
            print(p)
        failed |= bool(problems) or checked == 0
        if checked == 0:
            print(f"{path}: no Cascade Deployment found to check")
        elif not problems:
            print(f"{path}: the shutdown of each of its {checked} services fits its grace period")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
