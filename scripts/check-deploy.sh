#!/usr/bin/env bash
# Checks everything deployable without a cluster: the Helm chart (lint; render with the
# default and the HA values; every rendered manifest validated strictly against the
# Kubernetes schemas; renders that must fail do), every example YAML (parses; core kinds
# schema-valid; custom resources have apiVersion/kind/metadata.name), and the Dockerfile
# (hadolint). Tools come from scripts/install-tools.sh. The rendered keygate.toml is also
# fed to the real binary by tests/it/deploy.rs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/.tools/venv/bin"
k8s_version="${K8S_VERSION:-1.33.0}"
for tool in helm kubernetes-validate hadolint python; do
  if [ ! -x "$bin/$tool" ]; then
    echo "check-deploy: $tool missing; run ./scripts/install-tools.sh" >&2
    exit 1
  fi
done
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
chart="$root/helm/keygate"

echo "== helm lint (default, HA)"
"$bin/helm" lint --strict "$chart" >/dev/null
"$bin/helm" lint --strict "$chart" -f "$chart/values-ha.yaml" >/dev/null

echo "== helm template + kubernetes-validate --strict ($k8s_version)"
"$bin/helm" template kg "$chart" > "$out/default.yaml"
"$bin/helm" template kg "$chart" -f "$chart/values-ha.yaml" > "$out/ha.yaml"
"$bin/helm" template kg "$chart" --set serviceMonitor.enabled=true --set networkPolicy.enabled=true \
  --set podDisruptionBudget.enabled=true --set secrets.create=true --set secrets.adminToken=0123456789abcdef > "$out/all.yaml"
# The README's install commands, as written there (minus the cluster).
readme_flags=(-n keygate --set image.repository=registry.example.com/keygate --set image.tag=0.1.0)
"$bin/helm" template keygate "$chart" "${readme_flags[@]}" > "$out/readme-default.yaml"
"$bin/helm" template keygate "$chart" "${readme_flags[@]}" -f "$chart/values-ha.yaml" > "$out/readme-ha.yaml"
grep -q 'image: registry.example.com/keygate:0.1.0' "$out/readme-ha.yaml"
"$bin/kubernetes-validate" --strict --quiet -k "$k8s_version" "$out/default.yaml" "$out/ha.yaml" \
  "$out/readme-default.yaml" "$out/readme-ha.yaml"
# ServiceMonitor is a CRD: validate the rest of the everything-on render.
"$bin/python" - "$out/all.yaml" "$out/all-core.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
core = [d for d in docs if "." not in d["apiVersion"].split("/")[0] or d["apiVersion"].split("/")[0].endswith("k8s.io")]
assert any(d["kind"] == "ServiceMonitor" for d in docs), "ServiceMonitor not rendered"
yaml.safe_dump_all(core, open(sys.argv[2], "w"))
PY
"$bin/kubernetes-validate" --strict --quiet -k "$k8s_version" "$out/all-core.yaml"

echo "== renders that must fail"
must_fail() {
  if "$bin/helm" template kg "$chart" "$@" >/dev/null 2>"$out/err"; then
    echo "check-deploy: helm template $* rendered, but must fail" >&2
    exit 1
  fi
}
must_fail --set replicaCount=2                      # SQLite serves one replica
must_fail --set autoscaling.enabled=true            # idem
must_fail --set config.rate_limiter=redis           # redis without a URL
must_fail -f "$chart/values-ha.yaml" --set config.rate_limiter=memory   # replicas need a shared limiter

echo "== example manifests"
"$bin/python" - "$root" "$out/examples-core.yaml" <<'PY'
import glob, sys, yaml
root, core_out = sys.argv[1], sys.argv[2]
core, n = [], 0
for path in sorted(glob.glob(root + "/examples/**/*.yaml", recursive=True)):
    for d in yaml.safe_load_all(open(path)):
        if not d:
            continue
        n += 1
        if "static_resources" in d or "groups" in d or "admin" in d:
            continue  # Envoy bootstrap / Prometheus rules: checked by their own tests
        for field in ("apiVersion", "kind"):
            assert field in d, f"{path}: a document without {field}"
        assert d.get("metadata", {}).get("name"), f"{path}: {d['kind']} without metadata.name"
        group = d["apiVersion"].split("/")[0] if "/" in d["apiVersion"] else ""
        if group == "" or group.endswith(".k8s.io") and not group.startswith("gateway."):
            core.append(d)
print(f"   {n} documents parsed, {len(core)} core-kind documents to validate")
yaml.safe_dump_all(core, open(core_out, "w"))
PY
if [ -s "$out/examples-core.yaml" ]; then
  "$bin/kubernetes-validate" --strict --quiet -k "$k8s_version" "$out/examples-core.yaml"
fi

echo "== hadolint Dockerfile"
"$bin/hadolint" "$root/Dockerfile"
echo "check-deploy: OK"
