#!/usr/bin/env bash
# Checks everything deployable without a cluster, in a few seconds:
#  - the Helm chart: `helm lint --strict`; rendered with each documented combination of
#    values (default, HA, HPA, PDB, migrations with a chart-made Secret, existing Secrets,
#    other ports, readiness on the store, everything on) and with the README's own
#    `helm install` commands; every manifest validated strictly against the Kubernetes
#    schemas, at the default version and at the chart's minimum kubeVersion; and the
#    invariants a real cluster needs (below, `check_render`); renders that must fail do,
#    for the reason they must;
#  - every example custom resource against the upstream CRDs in ../shared/crds (unknown
#    fields rejected), Istio's MeshConfig (not a CRD) against its documented field list,
#    and the examples' wiring (Keygate's Service name, namespace and port; headers;
#    failure status);
#  - the Dockerfile: hadolint, and no KEYGATE_* setting in its ENV (env beats the chart's
#    file). tests/it/deploy.rs feeds the rendered keygate.toml to the real binary.
# Tools come from scripts/install-tools.sh. Under CI=true a missing tool fails; otherwise
# the check is skipped with a loud message.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/.tools/venv/bin"
crds="${KEYGATE_CRDS:-$root/../shared/crds}"
k8s_version="${K8S_VERSION:-1.33.0}"

missing=()
for tool in helm hadolint python; do
  [ -x "$bin/$tool" ] || missing+=("$tool")
done
if [ -x "$bin/python" ] && ! "$bin/python" -c 'import jsonschema, kubernetes_validate, yaml' 2>/dev/null; then
  missing+=("python modules jsonschema, kubernetes-validate, PyYAML")
fi
[ -d "$crds" ] || missing+=("the upstream CRDs ($crds; KEYGATE_CRDS names another directory)")
if [ "${#missing[@]}" -gt 0 ]; then
  printf 'check-deploy: missing: %s\n' "${missing[@]}" >&2
  if [ "${CI:-}" = true ]; then
    echo "check-deploy: required under CI=true; run ./scripts/install-tools.sh" >&2
    exit 1
  fi
  echo "!!! check-deploy: SKIPPED. Run ./scripts/install-tools.sh" >&2
  exit 0
fi

echo "== hadolint Dockerfile"
"$bin/hadolint" "$root/Dockerfile"

exec "$bin/python" - "$root" "$crds" "$k8s_version" <<'PY'
import functools, glob, math, os, re, shlex, subprocess, sys, tomllib
import jsonschema, kubernetes_validate, kubernetes_validate.utils, yaml

root, crd_dir, k8s_version = sys.argv[1:4]
chart = os.path.join(root, "helm/keygate")
helm = os.path.join(root, ".tools/venv/bin/helm")
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# kubernetes-validate reads its (large) schema files on every call.
kubernetes_validate.utils.schema_contents = functools.lru_cache(None)(
    kubernetes_validate.utils.schema_contents)
problems = []


def problem(where, msg):
    problems.append(f"{where}: {msg}")


def section(title):
    print(f"== {title}", flush=True)


def load_all(text):
    return [d for d in yaml.load_all(text, Loader=Loader) if d]


def ident(d):
    return f"{d['kind']}/{d.get('metadata', {}).get('name', '?')}"


def hook_of(d):
    """(events, weight) of a Helm hook, None for an ordinary resource."""
    ann = d.get("metadata", {}).get("annotations") or {}
    if "helm.sh/hook" not in ann:
        return None
    events = {e.strip() for e in ann["helm.sh/hook"].split(",")}
    return events, int(ann.get("helm.sh/hook-weight", "0"))


# ---------------------------------------------------------------- Kubernetes schemas
chart_meta = yaml.safe_load(open(os.path.join(chart, "Chart.yaml")))
m = re.search(r">=\s*v?(\d+)\.(\d+)", str(chart_meta.get("kubeVersion", "")))
min_k8s = (int(m[1]), int(m[2])) if m else None
k8s_versions = [k8s_version] + ([f"{min_k8s[0]}.{min_k8s[1]}.0"] if min_k8s else [])


def to_json_schema(s, in_junctor=False):
    """A CRD's structural schema as JSON Schema that rejects unknown fields, as the API
    server prunes or (with kubectl --validate=strict) refuses them: additionalProperties
    false wherever properties are listed without x-kubernetes-preserve-unknown-fields.
    Fields with a default are not required (the server fills them in). CEL rules
    (x-kubernetes-validations) are not evaluated."""
    s = dict(s)
    if s.pop("x-kubernetes-int-or-string", False) and "anyOf" not in s:
        s.pop("type", None)
        s["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if s.pop("nullable", False) and "type" in s:
        s["type"] = [s["type"], "null"]
    if "properties" in s:
        props = s["properties"] = {k: to_json_schema(v) for k, v in s["properties"].items()}
        if s.get("x-kubernetes-embedded-resource"):
            for k in ("apiVersion", "kind", "metadata"):
                props.setdefault(k, {})
        if "required" in s:
            s["required"] = [r for r in s["required"] if "default" not in props.get(r, {})]
            if not s["required"]:
                del s["required"]
        # Inside allOf/anyOf/oneOf/not a schema lists only what it constrains.
        if not in_junctor and not s.get("x-kubernetes-preserve-unknown-fields") \
                and "additionalProperties" not in s:
            s["additionalProperties"] = False
    if isinstance(s.get("additionalProperties"), dict):
        s["additionalProperties"] = to_json_schema(s["additionalProperties"])
    if isinstance(s.get("items"), dict):
        s["items"] = to_json_schema(s["items"])
    for j in ("allOf", "anyOf", "oneOf"):
        if j in s:
            s[j] = [to_json_schema(x, True) for x in s[j]]
    if "not" in s:
        s["not"] = to_json_schema(s["not"], True)
    return s


OBJECT_META = {
    "type": "object", "required": ["name"], "additionalProperties": False,
    "properties": {
        "name": {"type": "string"}, "namespace": {"type": "string"},
        "generateName": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
    },
}
crds = {}  # (group, version, kind) -> version entry
for path in sorted(glob.glob(os.path.join(crd_dir, "*.yaml"))):
    for d in load_all(open(path).read()):
        if d.get("kind") != "CustomResourceDefinition":
            continue
        for v in d["spec"]["versions"]:
            crds[(d["spec"]["group"], v["name"], d["spec"]["names"]["kind"])] = v
if not crds:
    problem(crd_dir, "no CustomResourceDefinitions found")
crd_validators = {}


def validate_custom(d, where):
    api = d["apiVersion"]
    group, version = api.split("/") if "/" in api else ("", api)
    key = (group, version, d["kind"])
    v = crds.get(key)
    if v is None:
        others = sorted(ver for g, ver, k in crds if (g, k) == (group, d["kind"]))
        return f"no CRD serves {d['kind']} {api}" + (f" (served: {', '.join(others)})" if others else "")
    if not v.get("served", True) or v.get("deprecated"):
        return f"{d['kind']} {api} is not served or deprecated in the upstream CRD"
    if key not in crd_validators:
        schema = to_json_schema(v["schema"]["openAPIV3Schema"])
        schema["properties"]["metadata"] = OBJECT_META
        for k in ("apiVersion", "kind"):  # not every CRD lists them
            schema["properties"].setdefault(k, {"type": "string"})
        crd_validators[key] = jsonschema.Draft4Validator(schema)
    for e in sorted(crd_validators[key].iter_errors(d), key=lambda e: list(e.path)):
        problem(where, f"{ident(d)} .{'.'.join(map(str, e.path))}: {e.message}")
    return None


def validate_core(d, where):
    """Strictly against each Kubernetes version checked; False when no schema exists."""
    for v in k8s_versions:
        try:
            kubernetes_validate.validate(d, v, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            return False
        except kubernetes_validate.ValidationError as e:
            problem(where, f"{ident(d)} (Kubernetes {v}) .{'.'.join(map(str, e.path))}: {e.message}")
    return True


# ---------------------------------------------------------------- the image
def dockerfile_env():
    """ENV of the Dockerfile's final stage."""
    text = open(os.path.join(root, "Dockerfile")).read().replace("\\\n", " ")
    final = re.split(r"(?im)^FROM\s", text)[-1]
    env = {}
    for line in final.splitlines():
        m = re.match(r"(?i)\s*ENV\s+(.*)", line)
        if not m:
            continue
        if "=" in m[1].split()[0]:
            for k, v in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S+)', m[1]):
                env[k] = v.strip('"')
        else:
            k, v = m[1].split(None, 1)
            env[k] = v.strip()
    return env


section("Dockerfile: one source of settings")
image_env = dockerfile_env()
for k in image_env:
    if k.startswith("KEYGATE_") and k != "KEYGATE_CONFIG":
        problem("Dockerfile", f"ENV {k}: environment beats the config file, so the image would "
                "override the chart's keygate.toml (ports, log format); put image defaults in "
                "the image's config file")


# ---------------------------------------------------------------- chart renders
def template(release, namespace, args, cwd=root):
    p = subprocess.run([helm, "template", release, *args, "-n", namespace],
                       capture_output=True, text=True, cwd=cwd)
    return p.returncode, p.stdout, p.stderr


def matches(selector, labels):
    """A LabelSelector (or a Service's plain map) against pod labels."""
    if selector is None:
        return False
    plain = "matchLabels" not in selector and "matchExpressions" not in selector
    ml = selector if plain else selector.get("matchLabels") or {}
    if not all(labels.get(k) == v for k, v in ml.items()):
        return False
    for e in ([] if plain else selector.get("matchExpressions") or []):
        has, val = e["key"] in labels, labels.get(e["key"])
        ok = {"In": has and val in e.get("values", []), "NotIn": val not in e.get("values", []),
              "Exists": has, "DoesNotExist": not has}[e["operator"]]
        if not ok:
            return False
    return True


def port_of(container, port):
    """A probe's or Service's port (number or name) as a container port number."""
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    return None


def set_path(cfg, path, value):
    for k in path[:-1]:
        cfg = cfg.setdefault(k, {})
    cfg[path[-1]] = value


def listen_port(addr, where, field):
    m = re.fullmatch(r"(.+):(\d+)", str(addr))
    if not m:
        problem(where, f"{field} = {addr!r} is not host:port")
        return None
    if m[1] not in ("0.0.0.0", "[::]"):
        problem(where, f"{field} = {addr!r}: the kubelet and the Service reach the pod's IP, not {m[1]}")
    return int(m[2])


def effective_config(docs, pod, c, where):
    """What the process runs with: the file KEYGATE_CONFIG names (the chart's ConfigMap
    when it is mounted there), then the image's ENV and the container's env on top, as
    Keygate layers them (env beats the file)."""
    env = dict(image_env)
    for e in c.get("env", []):
        env[e["name"]] = e.get("value", f"<Secret {e.get('valueFrom', {}).get('secretKeyRef', {}).get('name')}>")
    cfg, file = {}, env.get("KEYGATE_CONFIG")
    mounts = {m["mountPath"].rstrip("/"): m["name"] for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    if file and os.path.dirname(file) in mounts:
        vol = volumes.get(mounts[os.path.dirname(file)], {})
        cm_name = vol.get("configMap", {}).get("name")
        cm = next((d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == cm_name), None)
        if cm is None or os.path.basename(file) not in cm.get("data", {}):
            problem(where, f"KEYGATE_CONFIG={file} is not in a ConfigMap this render creates")
        else:
            try:
                cfg = tomllib.loads(cm["data"][os.path.basename(file)])
            except tomllib.TOMLDecodeError as e:
                problem(where, f"{file} does not parse: {e}")
    else:
        problem(where, f"KEYGATE_CONFIG={file!r}: the chart's keygate.toml is not what the process reads")
    for k, v in env.items():
        if k.startswith("KEYGATE_") and k != "KEYGATE_CONFIG":
            set_path(cfg, tuple(k[len("KEYGATE_"):].lower().split("__")), v)
    return cfg, env


def check_pdb(docs, where, replicas):
    for pdb in (d for d in docs if d["kind"] == "PodDisruptionBudget"):
        spec = pdb["spec"]

        def scaled(v):
            return math.ceil(int(v[:-1]) * replicas / 100) if isinstance(v, str) and v.endswith("%") else int(v)
        if "minAvailable" in spec and scaled(spec["minAvailable"]) >= replicas:
            problem(where, f"{ident(pdb)} minAvailable {spec['minAvailable']} with {replicas} "
                    "replica(s): no pod may ever be evicted, every node drain blocks")
        if "maxUnavailable" in spec and scaled(spec["maxUnavailable"]) < 1:
            problem(where, f"{ident(pdb)} maxUnavailable {spec['maxUnavailable']}: every node drain blocks")


def check_selectors(docs, where, dep, server_labels):
    """Everything that should mean "the Keygate replicas" selects exactly those pods."""
    others = [(ident(d), d["spec"]["template"]["metadata"].get("labels") or {})
              for d in docs if d["kind"] == "Job"]
    selectors = [(f"{ident(dep)} .spec.selector (and its HPA's)", dep["spec"]["selector"])]
    for d in docs:
        if d["kind"] == "Service":
            selectors.append((f"{ident(d)} .spec.selector", d["spec"].get("selector")))
        elif d["kind"] == "PodDisruptionBudget":
            selectors.append((f"{ident(d)} .spec.selector", d["spec"]["selector"]))
        elif d["kind"] == "NetworkPolicy":
            selectors.append((f"{ident(d)} .spec.podSelector", d["spec"]["podSelector"]))
    aff = dep["spec"]["template"]["spec"].get("affinity") or {}
    for kind in ("podAntiAffinity", "podAffinity"):
        for t in (aff.get(kind) or {}).get("requiredDuringSchedulingIgnoredDuringExecution", []):
            selectors.append((f"{ident(dep)} {kind} (required)", t.get("labelSelector")))
        for t in (aff.get(kind) or {}).get("preferredDuringSchedulingIgnoredDuringExecution", []):
            selectors.append((f"{ident(dep)} {kind} (preferred)", t["podAffinityTerm"].get("labelSelector")))
    for t in dep["spec"]["template"]["spec"].get("topologySpreadConstraints", []):
        selectors.append((f"{ident(dep)} topologySpreadConstraints", t.get("labelSelector")))
    for what, sel in selectors:
        if not matches(sel, server_labels):
            problem(where, f"{what} does not select the Keygate pods")
        for other, labels in others:
            if matches(sel, labels):
                problem(where, f"{what} also selects the pods of {other}")
    services = [d for d in docs if d["kind"] == "Service"]
    for sm in (d for d in docs if d["kind"] == "ServiceMonitor"):
        if not any(matches(sm["spec"]["selector"], s["metadata"].get("labels") or {}) for s in services):
            problem(where, f"{ident(sm)} selects no Service of the release")


def check_hooks(docs, where):
    """A hook runs before the release's ordinary resources exist: whatever a hook's pod
    reads that this release creates must be a hook of the same events, of lower weight."""
    rendered = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    for job in (d for d in docs if d["kind"] == "Job" and hook_of(d)):
        events, weight = hook_of(job)
        pod = job["spec"]["template"]["spec"]
        refs = set()
        if pod.get("serviceAccountName"):
            refs.add(("ServiceAccount", pod["serviceAccountName"]))
        for v in pod.get("volumes", []):
            if "secret" in v:
                refs.add(("Secret", v["secret"]["secretName"]))
            if "configMap" in v:
                refs.add(("ConfigMap", v["configMap"]["name"]))
            if "persistentVolumeClaim" in v:
                refs.add(("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]))
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            for e in c.get("env", []):
                vf = e.get("valueFrom", {})
                if "secretKeyRef" in vf:
                    refs.add(("Secret", vf["secretKeyRef"]["name"]))
                if "configMapKeyRef" in vf:
                    refs.add(("ConfigMap", vf["configMapKeyRef"]["name"]))
            for e in c.get("envFrom", []):
                if "secretRef" in e:
                    refs.add(("Secret", e["secretRef"]["name"]))
                if "configMapRef" in e:
                    refs.add(("ConfigMap", e["configMapRef"]["name"]))
        for ref in sorted(refs):
            dep = rendered.get(ref)
            if dep is None:
                continue  # the user's own, created beforehand
            h = hook_of(dep)
            if h is None:
                problem(where, f"{ident(job)} ({','.join(sorted(events))} hook) reads {ref[0]}/{ref[1]}, "
                        "an ordinary resource of the release: on a first install it does not exist yet")
            elif not events <= h[0] or h[1] >= weight:
                problem(where, f"{ident(job)} reads {ref[0]}/{ref[1]}, a hook that does not run "
                        f"before it (events {sorted(h[0])}, weight {h[1]} vs {weight})")


def check_render(name, docs, expect):
    where = f"render {name}"
    for d in docs:
        if not validate_core(d, where) and d["kind"] != "ServiceMonitor":
            problem(where, f"{ident(d)}: no schema to validate it against")
    deps = [d for d in docs if d["kind"] == "Deployment"]
    if len(deps) != 1:
        problem(where, f"{len(deps)} Deployments rendered")
        return
    dep = deps[0]
    pod = dep["spec"]["template"]["spec"]
    server_labels = dep["spec"]["template"]["metadata"].get("labels") or {}
    c = next(c for c in pod["containers"] if c["name"] == "keygate")
    cfg, env = effective_config(docs, pod, c, where)

    # The process listens where the containerPorts, probes and Service say.
    grpc, metrics = port_of(c, "grpc"), port_of(c, "metrics")
    if listen_port(cfg.get("listen", "127.0.0.1:50051"), where, "listen") != grpc:
        problem(where, f"the process listens on {cfg.get('listen')}, containerPort grpc is {grpc}")
    mcfg = cfg.get("metrics", {})
    if listen_port(mcfg.get("listen", "127.0.0.1:9464"), where, "metrics.listen") != metrics:
        problem(where, f"metrics.listen is {mcfg.get('listen')}, containerPort metrics is {metrics}")
    if str(mcfg.get("enabled", True)).lower() == "false":
        problem(where, "metrics.enabled is false: no /healthz or /readyz for the probes")
    want_format = expect.get("log_format", "json")
    if cfg.get("log", {}).get("format") != want_format:
        problem(where, f"log.format is {cfg.get('log', {}).get('format')!r}, the values asked for {want_format!r}")
    for s in (d for d in docs if d["kind"] == "Service"):
        for p in s["spec"]["ports"]:
            if port_of(c, p.get("targetPort", p["port"])) is None:
                problem(where, f"{ident(s)} port {p.get('name')} targets no container port")

    # Liveness: the process works; readiness as documented; neither follows the store
    # unless asked.
    probes = {k: c.get(k) for k in ("livenessProbe", "readinessProbe", "startupProbe")}
    want = {"livenessProbe": "/healthz", "startupProbe": "/healthz",
            "readinessProbe": expect.get("readiness", "/healthz")}
    for k, path in want.items():
        p = probes[k]
        if p is None:
            problem(where, f"no {k}")
        elif "httpGet" not in p:
            problem(where, f"{k} is not httpGet {path} on the metrics port ({sorted(p)}): Keygate's "
                    "gRPC health turns NOT_SERVING when the store is unreachable"
                    + (", so an outage would restart every pod" if k == "livenessProbe" else ""))
        elif p["httpGet"].get("path") != path or port_of(c, p["httpGet"]["port"]) != metrics:
            problem(where, f"{k} is {p['httpGet'].get('path')} on port {p['httpGet']['port']}, want {path} on metrics")

    # preStop `sleep` needs Kubernetes 1.30; the grace period covers sleep + drain.
    sleep = ((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep")
    if sleep and (min_k8s is None or min_k8s < (1, 30)):
        problem(where, "preStop.sleep needs Kubernetes >= 1.30: Chart.yaml kubeVersion must say so")
    drain = (sleep or {}).get("seconds", 0) + int(cfg.get("shutdown_grace_secs", 30))
    if pod.get("terminationGracePeriodSeconds", 30) <= drain:
        problem(where, f"terminationGracePeriodSeconds {pod.get('terminationGracePeriodSeconds', 30)} "
                f"<= preStop sleep + shutdown_grace_secs ({drain})")

    # Replicas: what the HPA may scale to; shared store and limiter beyond one.
    hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"
            and d["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]]
    if hpas:
        lo, hi = hpas[0]["spec"].get("minReplicas", 1), hpas[0]["spec"]["maxReplicas"]
        if "replicas" in dep["spec"]:
            problem(where, "Deployment sets replicas while an HPA scales it (each upgrade resets the count)")
    else:
        lo = hi = dep["spec"].get("replicas", 1)
    db = str(cfg.get("database_url", "sqlite://keygate.db"))
    if hi > 1:
        if db.startswith("sqlite:"):
            problem(where, f"up to {hi} replicas on SQLite")
        if str(cfg.get("rate_limiter", "memory")) != "redis":
            problem(where, f"up to {hi} replicas with the in-memory limiter: each grants the full budget")
    if db.startswith("sqlite:"):
        dbdir = os.path.dirname(db[len("sqlite://"):])
        if not any(dbdir == m["mountPath"].rstrip("/") for m in c.get("volumeMounts", [])):
            problem(where, f"SQLite database {db} is not on a mounted volume (read-only root)")
    check_pdb(docs, where, lo)
    check_selectors(docs, where, dep, server_labels)
    check_hooks(docs, where)
    for k, v in expect.get("kinds", {}).items():
        if sum(d["kind"] == k for d in docs) != v:
            problem(where, f"expected {v} {k}")


pg = ["--set", "externalDatabase.existingSecret=kg-db"]
shared_limiter = ["--set", "redis.existingSecret=kg-redis", "--set", "config.rate_limiter=redis"]
token = "0123456789abcdef0123"
ha = ["-f", f"{chart}/values-ha.yaml"]
RENDERS = {
    "default": ([], {"kinds": {"PersistentVolumeClaim": 1, "Job": 0}}),
    "ha": (ha, {"kinds": {"HorizontalPodAutoscaler": 1, "PodDisruptionBudget": 1, "Job": 1}}),
    "hpa": (pg + shared_limiter + ["--set", "autoscaling.enabled=true"],
            {"kinds": {"HorizontalPodAutoscaler": 1}}),
    "pdb, one replica": (["--set", "podDisruptionBudget.enabled=true"],
                         {"kinds": {"PodDisruptionBudget": 1}}),
    "pdb, three replicas, minAvailable 2": (
        pg + shared_limiter + ["--set", "replicaCount=3", "--set", "podDisruptionBudget.enabled=true",
                               "--set", "podDisruptionBudget.minAvailable=2"],
        {"kinds": {"PodDisruptionBudget": 1}}),
    "migrations, chart-made Secret": (
        ["--set", "secrets.create=true", "--set", "secrets.databaseUrl=postgres://kg:pw@db:5432/kg",
         "--set", f"secrets.adminToken={token}"], {"kinds": {"Job": 1, "Secret": 1}}),
    "existing Secrets": (
        pg + ["--set", "adminToken.existingSecret=kg-admin", "--set", "authorizeToken.existingSecret=kg-authz"],
        {"kinds": {"Job": 1, "Secret": 0}}),
    "other ports, pretty logs": (
        ["--set", "service.grpcPort=6000", "--set", "service.metricsPort=9100",
         "--set", "config.log.format=pretty"], {"log_format": "pretty"}),
    "readiness follows the store": (["--set", "probes.readinessFollowsStore=true"], {"readiness": "/readyz"}),
    "anti-affinity hard": (pg + shared_limiter + ["--set", "replicaCount=2", "--set", "podAntiAffinity=hard"], {}),
    "everything on": (
        ["--set", "serviceMonitor.enabled=true", "--set", "networkPolicy.enabled=true",
         "--set", "podDisruptionBudget.enabled=true", "--set", "secrets.create=true",
         "--set", f"secrets.adminToken={token}", "--set", f"secrets.authorizeToken={token}"],
        {"kinds": {"ServiceMonitor": 1, "NetworkPolicy": 1, "PodDisruptionBudget": 1}}),
}

section("helm lint --strict (default, HA)")
for extra in ([], ha):
    p = subprocess.run([helm, "lint", "--strict", chart, *extra], capture_output=True, text=True)
    if p.returncode:
        problem("helm lint " + " ".join(extra), p.stdout + p.stderr)

section(f"helm template × {len(RENDERS)}, validated against Kubernetes {' and '.join(k8s_versions)} + invariants")
for name, (args, expect) in RENDERS.items():
    rc, out, err = template("kg", "keygate", [chart, *args])
    if rc:
        problem(f"render {name}", err.strip())
        continue
    check_render(name, load_all(out), expect)

section("renders that must fail, for their reason")
MUST_FAIL = [
    (["--set", "replicaCount=2"], "SQLite"),
    (["--set", "autoscaling.enabled=true"], "SQLite"),
    (["--set", "config.rate_limiter=redis"], "needs redis.existingSecret"),
    (ha + ["--set", "config.rate_limiter=memory"], "in-memory limiter"),
    (pg + ["--set", "autoscaling.enabled=true"], "in-memory limiter"),  # HPA with one replica set
    (["--set", "podDisruptionBudget.enabled=true", "--set", "podDisruptionBudget.minAvailable=1"], "block every node drain"),
    (ha + ["--set", "podDisruptionBudget.minAvailable=3"], "block every node drain"),
    (["--set", "podDisruptionBudget.enabled=true", "--set", "podDisruptionBudget.maxUnavailable=0"], "block every node drain"),
    (["--set", "config.metrics.enabled=false"], "probes"),
    (["--set", "extraEnv[0].name=KEYGATE_LISTEN", "--set", "extraEnv[0].value=0.0.0.0:1"], "owns this setting"),
    (["--set", "terminationGracePeriodSeconds=30"], "must exceed"),
    (["--set", "secrets.create=true", "--set", "secrets.adminToken=short"], "16 characters"),
    (["--set", "podAntiAffinity=always"], "podAntiAffinity"),
    (["--kube-version", "1.29.0"], "kubeVersion"),
]
for args, reason in MUST_FAIL:
    rc, _, err = template("kg", "keygate", [chart, *args])
    if rc == 0:
        problem("must fail", f"helm template {' '.join(args)} rendered")
    elif reason not in err:
        problem("must fail", f"helm template {' '.join(args)} failed, but not for {reason!r}: {err.strip()}")

# ---------------------------------------------------------------- the README
section("README: the Kubernetes walkthrough, as written")
readme = open(os.path.join(root, "README.md")).read()
k8s_section = readme.split("\n## Deploying on Kubernetes\n", 1)[-1].split("\n## ", 1)[0]
readme_renders = []  # (release, namespace, docs)
built = set(re.findall(r"^docker build -t (\S+) ", k8s_section, re.M))
if len(built) != 1:
    problem("README", f"the Kubernetes section should build one image, builds {sorted(built)}")
for block in re.findall(r"```sh\n(.*?)```", k8s_section, re.S):
    namespaces, secrets, names = set(), {}, []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        ns = next((words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-n", "--namespace")), "default")
        if words[:3] in (["kubectl", "create", "namespace"], ["kubectl", "create", "ns"]):
            namespaces.add(words[3])
        elif words[0] == "kubectl" and words[1:] and "create" in words and "secret" in words:
            if ns not in namespaces:
                problem("README", f"`{line.strip()}`: namespace {ns} is not created before it in this block")
            name = words[words.index("secret") + 2]
            secrets[(ns, name)] = {w.split("=", 2)[1] for w in words if w.startswith("--from-literal=")}
        elif words[0] == "kubectl":
            names += [w for w in words if re.fullmatch(r"(deploy|deployment|svc|service)/[\w.-]+", w)]
        elif words[0] == "helm" and words[1] in ("install", "upgrade"):
            rest = [w for w in words[2:] if w not in ("--create-namespace", "--install", "--wait", "--atomic")]
            if "--create-namespace" in words:
                namespaces.add(ns)
            elif ns not in namespaces:
                problem("README", f"`{line.strip()}`: namespace {ns} is not created in this block")
            rc, out, err = template(rest[0], ns, rest[1:])
            if rc:
                problem("README", f"`{line.strip()}` does not render: {err.strip()}")
                continue
            docs = load_all(out)
            readme_renders.append((rest[0], ns, docs))
            images = {c["image"] for d in docs for c in
                      (d.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or [])}
            if images != built:
                problem("README", f"`{line.strip()}` runs {sorted(images)}, the section builds {sorted(built)}")
            check_render(f"README `{line.strip()[:60]}…`", docs, {})
            # The Secrets it reads that the chart does not make are the ones created above.
            made = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
            for d in docs:
                for c in (d.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []):
                    for e in c.get("env", []):
                        ref = e.get("valueFrom", {}).get("secretKeyRef")
                        if ref and ref["name"] not in made and ref["key"] not in secrets.get((ns, ref["name"]), ()):
                            problem("README", f"{ident(d)} reads key {ref['key']} of Secret {ns}/{ref['name']}, "
                                    "which the walkthrough does not create")
    for n in names:
        kind, obj = n.split("/")
        kind = "Deployment" if kind.startswith("deploy") else "Service"
        if not any(d["kind"] == kind and d["metadata"]["name"] == obj for _, _, docs in readme_renders for d in docs):
            problem("README", f"`{n}`: the README's installs render no {kind} {obj}")
if not readme_renders:
    problem("README", "no `helm install` in the Kubernetes section")

# ---------------------------------------------------------------- the examples
section("examples: upstream CRDs, Istio MeshConfig, Keygate wiring")
# The Service the examples call: the README's first install (release and namespace as there).
keygate_svc = None
if readme_renders:
    release, ns, docs = readme_renders[0]
    svc = next(d for d in docs if d["kind"] == "Service")
    keygate_svc = (svc["metadata"]["name"], ns,
                   next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc"))

# Istio's MeshConfig is not a CRD: its ext_authz provider fields as documented in
# istio/api mesh/v1alpha1/config.proto (EnvoyExternalAuthorization{Grpc,Http}Provider,
# EnvoyExternalAuthorizationRequestBody). Istio ignores fields it does not know.
ISTIO_PROVIDER_FIELDS = {
    "envoyExtAuthzGrpc": {"service", "port", "timeout", "failOpen", "clearRouteCache",
                          "statusOnError", "includeRequestBodyInCheck"},
    "envoyExtAuthzHttp": {"service", "port", "timeout", "pathPrefix", "failOpen", "clearRouteCache",
                          "statusOnError", "includeHeadersInCheck", "includeRequestHeadersInCheck",
                          "includeAdditionalHeadersInCheck", "includeRequestBodyInCheck",
                          "headersToUpstreamOnAllow", "headersToDownstreamOnDeny",
                          "headersToDownstreamOnAllow"},
}
ISTIO_REQUEST_BODY_FIELDS = {"maxRequestBytes", "allowPartialMessage", "packAsBytes"}

settings_rs = open(os.path.join(root, "src/envoy/settings.rs")).read()
context_keys = set(re.findall(r'"(keygate\.[a-z_]+)"', settings_rs.split("CONTEXT_KEYS", 1)[1].split("];", 1)[0]))
default_credentials = re.findall(r'"([^"]+)"', re.search(r"pub credentials: Vec<String> = \[(.*?)\]", settings_rs)[1])
default_tenant_header = re.search(r'pub tenant_header: String = "([^"]+)"', settings_rs)[1]


def credential_headers(credentials):
    return {c.split(":", 1)[1].lower() if c.startswith("header:") else "authorization"
            for c in re.split(r"[, ]+", credentials) if c}


def check_keygate_ref(where, name, namespace, port):
    if keygate_svc and (name, namespace, port) != keygate_svc:
        problem(where, f"calls {namespace}/{name}:{port}, but the README's install makes Service "
                f"{keygate_svc[1]}/{keygate_svc[0]}:{keygate_svc[2]}")


def check_istio_operator(d, where):
    spec = d.get("spec", {})
    for k in set(spec) - {"meshConfig"}:
        problem(where, f"IstioOperator spec.{k}: not in this check's field list")
    mesh = spec.get("meshConfig", {})
    for k in set(mesh) - {"extensionProviders"}:
        problem(where, f"meshConfig.{k}: not in this check's field list")
    for i, p in enumerate(mesh.get("extensionProviders", [])):
        at = f"meshConfig.extensionProviders[{i}]"
        kinds = set(p) - {"name"}
        if "name" not in p or len(kinds) != 1 or not kinds <= set(ISTIO_PROVIDER_FIELDS):
            problem(where, f"{at}: needs a name and one of {sorted(ISTIO_PROVIDER_FIELDS)}, has {sorted(p)}")
            continue
        kind = kinds.pop()
        cfg = p[kind]
        for k in sorted(set(cfg) - ISTIO_PROVIDER_FIELDS[kind]):
            problem(where, f"{at}.{kind}.{k}: no such field (Istio drops it silently)")
        for k in sorted(set(cfg.get("includeRequestBodyInCheck") or {}) - ISTIO_REQUEST_BODY_FIELDS):
            problem(where, f"{at}.{kind}.includeRequestBodyInCheck.{k}: no such field")
        if kind == "envoyExtAuthzGrpc":
            host = str(cfg.get("service", "")).split("/")[-1]
            m = re.fullmatch(r"([^.]+)\.([^.]+)\.svc\.cluster\.local", host)
            if not m:
                problem(where, f"{at}: service {host!r} is not <service>.<namespace>.svc.cluster.local")
            else:
                check_keygate_ref(where, m[1], m[2], cfg.get("port"))
            if cfg.get("failOpen", False) or str(cfg.get("statusOnError")) != "503" or "timeout" not in cfg:
                problem(where, f"{at}: set failOpen false, statusOnError \"503\" (the plain Envoy example's "
                        "status_on_error) and a timeout")
        yield p["name"]


examples = []
for path in sorted(glob.glob(os.path.join(root, "examples/**/*.yaml"), recursive=True)):
    for d in load_all(open(path).read()):
        if "static_resources" in d or "groups" in d:
            continue  # Envoy bootstrap, Prometheus rules: run by tests/it (envoy.rs, observability.rs)
        examples.append((os.path.relpath(path, root), d))
istio_providers = set()
for where, d in examples:
    if not (d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name")):
        problem(where, "a document without apiVersion, kind or metadata.name")
        continue
    if d["kind"] == "IstioOperator":
        istio_providers |= set(check_istio_operator(d, where))
    elif not validate_core(d, where):
        err = validate_custom(d, where)
        if err:
            problem(where, err)

by_kind = {}
for where, d in examples:
    by_kind.setdefault(d.get("kind"), []).append((where, d))
for where, d in by_kind.get("AuthorizationPolicy", []):
    if d["spec"].get("action") == "CUSTOM" and d["spec"].get("provider", {}).get("name") not in istio_providers:
        problem(where, f"{ident(d)}: provider {d['spec'].get('provider')} is not an extension provider of the examples")
routes = {(d["metadata"].get("namespace", "default"), d["metadata"]["name"]): d
          for _, d in by_kind.get("HTTPRoute", [])}
for where, d in by_kind.get("HTTPRoute", []):
    for ref in d["spec"].get("parentRefs", []):
        if "namespace" not in ref:
            problem(where, f"{ident(d)} parentRef {ref['name']}: no namespace, so the Gateway is looked up "
                    f"in the route's own namespace ({d['metadata'].get('namespace')})")
for where, d in by_kind.get("SecurityPolicy", []):
    ns = d["metadata"].get("namespace", "default")
    ext = d["spec"].get("extAuth")
    if not ext:
        continue
    for ref in (ext.get("grpc") or {}).get("backendRefs", []):
        check_keygate_ref(where, ref["name"], ref.get("namespace", ns), ref.get("port"))
        grants = [g for _, g in by_kind.get("ReferenceGrant", [])
                  if g["metadata"].get("namespace") == ref.get("namespace", ns)
                  and any(f.get("kind") == "SecurityPolicy" and f.get("namespace") == ns for f in g["spec"]["from"])
                  and any(t.get("kind") == "Service" and t.get("name") in (None, ref["name"]) for t in g["spec"]["to"])]
        if ref.get("namespace", ns) != ns and not grants:
            problem(where, f"{ident(d)}: no ReferenceGrant lets it reach Service {ref.get('namespace')}/{ref['name']}")
    if ext.get("failOpen", False) or ext.get("statusOnError") != 503 or "timeout" not in ext:
        problem(where, f"{ident(d)}: set failOpen false, statusOnError 503 and a timeout")
    ctx = {}
    for c in ext.get("contextExtensions", []):
        if c["name"].lower().startswith("keygate.") and c["name"] not in context_keys:
            problem(where, f"{ident(d)}: contextExtension {c['name']} is not one of Keygate's ({sorted(context_keys)})")
        if c.get("type", "Value") != "Value" or "value" not in c or "valueRef" in c:
            problem(where, f"{ident(d)}: contextExtension {c['name']}: give type Value and a value")
        ctx[c["name"]] = c.get("value", "")
    if "headersToExtAuth" in ext:
        need = credential_headers(ctx.get("keygate.credentials", ",".join(default_credentials)))
        if not ctx.get("keygate.tenant"):
            need.add(ctx.get("keygate.tenant_header", default_tenant_header).lower())
        sent = {h.lower() for h in ext["headersToExtAuth"]}
        if not need <= sent:
            problem(where, f"{ident(d)}: headersToExtAuth lacks {sorted(need - sent)}, which the route reads")
    for t in d["spec"].get("targetRefs", []):
        route = routes.get((ns, t["name"])) if t["kind"] == "HTTPRoute" else None
        if t["kind"] == "HTTPRoute" and route is None:
            problem(where, f"{ident(d)} targets HTTPRoute {ns}/{t['name']}, not in the examples")
        elif route and "sectionName" in t and t["sectionName"] not in [r.get("name") for r in route["spec"]["rules"]]:
            problem(where, f"{ident(d)} targets rule {t['sectionName']} that HTTPRoute {t['name']} does not name")
# Istio policies on Keygate itself select its pods and name its container ports.
if readme_renders:
    dep = next(d for d in readme_renders[0][2] if d["kind"] == "Deployment")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    ports = {str(p["containerPort"]) for c in dep["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    for kind in ("AuthorizationPolicy", "PeerAuthentication"):
        for where, d in by_kind.get(kind, []):
            if d["metadata"].get("namespace") != keygate_svc[1]:
                continue
            if not matches(d["spec"].get("selector", {}), labels):
                problem(where, f"{ident(d)} does not select the Keygate pods ({labels})")
            for r in d["spec"].get("rules", []):
                for t in r.get("to", []):
                    for port in t.get("operation", {}).get("ports", []):
                        if port not in ports:
                            problem(where, f"{ident(d)}: port {port} is not a Keygate container port {sorted(ports)}")
# Values snippets in the examples' READMEs are values the chart takes.
for md in sorted(glob.glob(os.path.join(root, "examples/*/README.md"))):
    for block in re.findall(r"```yaml\n(.*?)```", open(md).read(), re.S):
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"check-deploy-{os.getpid()}.yaml")
        open(path, "w").write(block)
        rc, out, err = template("keygate", "keygate", [chart, "-f", path])
        os.unlink(path)
        if rc:
            problem(os.path.relpath(md, root), f"values snippet does not render: {err.strip()}")
        else:
            check_render(f"{os.path.relpath(md, root)} values", load_all(out), {})
for where, g in by_kind.get("ReferenceGrant", []):
    for t in g["spec"]["to"]:
        if t.get("kind") == "Service":
            check_keygate_ref(where, t.get("name"), g["metadata"].get("namespace"), keygate_svc and keygate_svc[2])
print(f"   {len(examples)} example documents; {len(crds)} CRD versions from {crd_dir}")

if problems:
    print(f"\ncheck-deploy: {len(problems)} problem(s):", file=sys.stderr)
    for p in problems:
        print(f"  - {p}", file=sys.stderr)
    sys.exit(1)
print("check-deploy: OK")
PY
