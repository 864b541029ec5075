#!/usr/bin/env bash
# Side-by-side benchmark (issue #12): the gateway against direct gRPC, a null HTTP server,
# grpc-gateway (Go) and a hand-written Python gateway, all on loopback in front of the same trivial
# upstream. Prints one markdown table and writes it to bench/results/latest.md.
#
#   bash bench/run.sh            # 3 interleaved rounds, 5 s per run (about 10 minutes)
#   bash bench/run.sh --quick    # 1 round, 2 s per run (about 2 minutes)
#   bash bench/run.sh --only gateway,direct --rounds 5      # any harness option: see --help
#   bash bench/run.sh --spool-backend redb,redis             # REDIS_URL for the second backend
#
# It installs what is missing: wrk and h2load (Debian's wrk, nghttp2-client), Go modules through
# the Go proxy, aiohttp/grpcio/grpcio-tools in bench/.venv; builds the release gateway
# (GATEWAY_BIN=path skips that), the Go tools into bench/.bin, and the Python stubs into
# bench/peers/python/gen. bench/peers/grpc-gateway/gen is committed; it is regenerated (protoc and
# Go plugins) only when proto/'s common.proto or group.proto changed.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root"

for arg in "$@"; do
  if [[ $arg == -h || $arg == --help ]]; then exec python3 "$here/harness.py" --help; fi
done

sudo_() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
step() { echo "== $*" >&2; }

# 1. Load tools.
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
command -v nghttp >/dev/null || missing+=(nghttp2-client)
if ((${#missing[@]})); then
  step "installing ${missing[*]}"
  sudo_ apt-get update -qq
  sudo_ apt-get install -y -qq "${missing[@]}" >&2
fi
command -v go >/dev/null || { echo "bench/run.sh: Go is needed (https://go.dev/dl)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "bench/run.sh: python3 is needed" >&2; exit 1; }

# 2. Python peer: venv and stubs.
if [[ ! -x $here/.venv/bin/python ]] || ! "$here/.venv/bin/python" -c 'import aiohttp, grpc, grpc_tools' 2>/dev/null; then
  step "creating bench/.venv (aiohttp, grpcio, grpcio-tools)"
  python3 -m venv "$here/.venv"
  "$here/.venv/bin/pip" install -q --disable-pip-version-check aiohttp grpcio grpcio-tools >&2
fi
rm -rf "$here/peers/python/gen"
mkdir -p "$here/peers/python/gen"
"$here/.venv/bin/python" -m grpc_tools.protoc -I proto --python_out="$here/peers/python/gen" \
  --grpc_python_out="$here/peers/python/gen" proto/openim/callback/v1/*.proto

# 3. grpc-gateway stubs (committed; regenerated when the protos changed) and the Go binaries.
stamp=$here/peers/grpc-gateway/gen/.proto.sha256
if ! (cd proto && sha256sum --quiet -c "$stamp" >/dev/null 2>&1); then
  step "protos changed: regenerating bench/peers/grpc-gateway/gen"
  bash "$here/peers/grpc-gateway/generate"
fi
step "building bench/.bin (upstream, null, grpc-gateway, tools)"
(cd "$here" && go build -o .bin/ ./upstream ./null ./peers/grpc-gateway ./tools/grpcbody ./tools/openloop ./tools/idleconns)

# 4. The gateway.
gateway=${GATEWAY_BIN:-}
if [[ -z $gateway ]]; then
  step "cargo build --release --bin openim-callback-gateway"
  gateway=$root/target/release/openim-callback-gateway
  if ! cargo build --release --quiet --bin openim-callback-gateway; then
    if [[ -x $gateway ]]; then
      echo "bench/run.sh: WARNING: cargo build failed; measuring the existing $gateway" \
        "(built $(date -r "$gateway" '+%F %T'))" >&2
    else
      echo "bench/run.sh: cargo build failed and there is no gateway binary: its rows will fail" >&2
    fi
  fi
fi

# 5. Measure. 1000 idle connections need more than the usual 1024 descriptors.
ulimit -n 4096 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# The harness stops every server it started, also on SIGINT/SIGTERM, and lists their pids in
# BENCH_PIDFILE; the EXIT trap stops any still alive should the harness itself have been killed.
BENCH_PIDFILE=$(mktemp)
export BENCH_PIDFILE
cleanup() {
  local pid
  while read -r pid; do kill -TERM "$pid" 2>/dev/null || true; done <"$BENCH_PIDFILE"
  rm -f "$BENCH_PIDFILE"
}
trap cleanup EXIT
GATEWAY_BIN=$gateway "$here/.venv/bin/python" "$here/harness.py" "$@" &
harness=$!
trap 'kill -TERM "$harness" 2>/dev/null; wait "$harness"; exit 130' INT TERM
wait "$harness"
