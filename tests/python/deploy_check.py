"""Checks deploy/: the compose file against the Compose Specification's JSON schema (as
vendored by check-jsonschema), the YAML configs it mounts, and the Grafana dashboard's JSON.
No container engine is needed (and none runs here): this checks syntax and references only."""

import json
import pathlib
import subprocess
import sys

from ruamel.yaml import YAML

deploy = pathlib.Path(sys.argv[1])
compose = deploy / "compose.yaml"

subprocess.run(
    [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(compose)],
    check=True,
)
print("ok compose schema")

yaml = YAML(typ="safe")
spec = yaml.load(compose.read_text())
mounted = 0
for name, service in spec["services"].items():
    for volume in service.get("volumes", []):
        source = volume.split(":")[0]
        path = (deploy / source).resolve()
        assert path.exists(), f"{name}: {source} does not exist"
        mounted += 1
    for dependency in service.get("depends_on", []):
        assert dependency in spec["services"], f"{name} depends on unknown {dependency}"
print(f"ok mounts {mounted}")

for config in sorted((deploy / "observability").rglob("*.y*ml")):
    assert yaml.load(config.read_text()), f"{config} is empty"
for manifest in sorted((deploy / "kubernetes").glob("*.y*ml")):
    docs = [doc for doc in yaml.load_all(manifest.read_text()) if doc]
    kinds = [doc["kind"] for doc in docs]
    assert kinds, f"{manifest} holds no object"
    for needed in ("ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"):
        assert needed in kinds, f"{manifest}: no {needed}"
    # The weir config in the ConfigMap, for the Rust test to read with weir's own parser.
    for doc in docs:
        if doc["kind"] == "ConfigMap" and "weir.toml" in doc.get("data", {}):
            out = pathlib.Path(sys.argv[2]) / "kubernetes-weir.toml" if len(sys.argv) > 2 else None
            if out:
                out.write_text(doc["data"]["weir.toml"])
    hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")
    weir = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "weir")
    assert hpa["spec"]["scaleTargetRef"]["name"] == weir["metadata"]["name"]
print("ok yaml")

collector = yaml.load((deploy / "observability/otel-collector.yaml").read_text())
pipeline = collector["service"]["pipelines"]["traces"]
for kind in ("receivers", "processors", "exporters"):
    for part in pipeline[kind]:
        assert part in collector[kind], f"collector pipeline uses undefined {part}"
print("ok collector pipeline")

dashboard = json.loads((deploy / "observability/grafana/dashboards/weir.json").read_text())
assert dashboard["panels"], "the dashboard has panels"
print(f"ok dashboard {len(dashboard['panels'])} panels")
