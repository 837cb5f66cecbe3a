"""Runs in the KServe SDK's interpreter (KSERVE_PYTHON): reads KServe manifests (YAML files named
on the command line) into the SDK's own model classes and prints every problem as JSON.

The SDK's classes (generated from KServe's OpenAPI definitions, with the Kubernetes client's for the
core types) say which fields each object has and of which type; a constructor refuses a missing
required field or a value out of its enum. A key the classes do not know is a problem too (the SDK
itself would drop it silently), so a misspelt field fails here as it would in the API server."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import kserve.models as kserve_models
import kubernetes.client.models as k8s_models
import yaml

KINDS = {
    ("serving.kserve.io/v1alpha1", "ClusterServingRuntime"): "V1alpha1ClusterServingRuntime",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
}
PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str, int, float),  # quantities ("1", 1, 0.5) are strings in the classes
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "object": (object,),
    "datetime": (str,),
    "date": (str,),
}


def build(data: Any, klass: str, path: str, problems: list[str]) -> Any:
    if data is None:
        return None
    if klass.startswith(("list[", "List[")):  # the Kubernetes client spells it List[...]
        inner = klass[5:-1]
        if not isinstance(data, list):
            problems.append(f"{path}: a list expected, got {type(data).__name__}")
            return None
        return [build(item, inner, f"{path}[{i}]", problems) for i, item in enumerate(data)]
    match = re.fullmatch(r"dict\(([^,]*), (.*)\)|Dict\[([^,]*), (.*)\]", klass)
    if match:
        if not isinstance(data, dict):
            problems.append(f"{path}: a mapping expected, got {type(data).__name__}")
            return None
        inner = match.group(2) or match.group(4)
        return {k: build(v, inner, f"{path}.{k}", problems) for k, v in data.items()}
    if klass in PRIMITIVES:
        ok = isinstance(data, PRIMITIVES[klass]) and not (klass == "int" and isinstance(data, bool))
        if not ok:
            problems.append(f"{path}: {klass} expected, got {data!r}")
        return data
    cls = getattr(kserve_models, klass, None) or getattr(k8s_models, klass)
    if not isinstance(data, dict):
        problems.append(f"{path}: a {klass} object expected, got {type(data).__name__}")
        return None
    by_key = {key: attr for attr, key in cls.attribute_map.items()}
    kwargs = {}
    for key, value in data.items():
        attr = by_key.get(key)
        if attr is None:
            problems.append(f"{path}.{key}: not a field of {klass}")
            continue
        kwargs[attr] = build(value, cls.openapi_types[attr], f"{path}.{key}", problems)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        problems.append(f"{path}: {klass}: {exc}")
        return None


def main(paths: list[str]) -> None:
    report = []
    for path in paths:
        with open(path) as f:
            for n, doc in enumerate(yaml.safe_load_all(f)):
                if doc is None:
                    continue
                problems: list[str] = []
                klass = KINDS.get((doc.get("apiVersion"), doc.get("kind")))
                if klass is None:
                    problems.append(f"not a KServe kind: {doc.get('apiVersion')} {doc.get('kind')}")
                else:
                    build(doc, klass, doc["kind"], problems)
                report.append({"file": path, "document": n, "kind": doc.get("kind"), "problems": problems})
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1:])
