#!/usr/bin/env python3
"""Every selector in rendered manifests selects what it is meant to.

Schema validation and checkov read each object alone, so a NetworkPolicy whose
podSelector matches no pod passes both, and silently protects nothing (or, for
an allow rule, leaves the pods it meant cut off). This reads the rendered
objects together: each NetworkPolicy, PodDisruptionBudget and Service selector
must match at least one pod template in its namespace, each NetworkPolicy peer
selecting pods of its own namespace must too, and each autoscaler must target
a Deployment that exists.

Usage: k8s-selectors.py RENDERED.yaml...
"""

import sys

import yaml

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}


def matches(selector, labels):
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def check(path):
    with open(path) as f:
        objects = [o for o in yaml.safe_load_all(f) if o]
    pods = []  # (namespace, workload name, pod template labels)
    workloads = set()
    for o in objects:
        if o["kind"] in WORKLOADS:
            namespace = o["metadata"].get("namespace", "default")
            labels = o["spec"]["template"]["metadata"].get("labels") or {}
            pods.append((namespace, o["metadata"]["name"], labels))
            workloads.add((namespace, o["kind"], o["metadata"]["name"]))

    problems = []

    def selects(what, namespace, selector):
        chosen = [name for ns, name, labels in pods if ns == namespace and matches(selector, labels)]
        if not chosen:
            problems.append(f"{path}: {what} selects no pod ({selector})")
        return chosen

    for o in objects:
        kind, meta = o["kind"], o["metadata"]
        namespace = meta.get("namespace", "default")
        name = f"{kind}/{meta['name']}"
        spec = o.get("spec") or {}
        if kind == "NetworkPolicy":
            selects(name, namespace, spec.get("podSelector") or {})
            for direction, side in (("ingress", "from"), ("egress", "to")):
                for rule in spec.get(direction) or []:
                    for peer in rule.get(side) or []:
                        # A peer in other namespaces (namespaceSelector) is
                        # not ours to check.
                        if "podSelector" in peer and "namespaceSelector" not in peer:
                            selects(f"{name} {direction} peer", namespace, peer["podSelector"])
        elif kind == "PodDisruptionBudget":
            selects(name, namespace, spec.get("selector") or {})
        elif kind == "Service" and spec.get("selector"):
            selects(name, namespace, {"matchLabels": spec["selector"]})
        elif kind == "HorizontalPodAutoscaler":
            target = spec["scaleTargetRef"]
            if (namespace, target["kind"], target["name"]) not in workloads:
                problems.append(f"{path}: {name} scales {target['kind']}/{target['name']}, which is not here")
    return problems, len(pods)


def main():
    failed = False
    for path in sys.argv[1:]:
        problems, pods = check(path)
        for p in problems:
            print(p)
        failed |= bool(problems)
        if not problems:
            print(f"{path}: every selector selects some of its {pods} pod templates")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
