#!/usr/bin/env bash
# (Re)creates fuzz/seeds/{decode,reply,status}/ from tests/data/payloads: the command byte plus
# each real OpenIM body (Go's compact wire form) for `decode`; each *.response.json sample reply,
# read as OpenIM reads it and encoded as the response protobuf, for `reply`; a status rejection
# with a Rejection detail and an INTERNAL error per before command for `status`.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo run --quiet --release --example seed -- "$PWD/seeds"
du -sh seeds
