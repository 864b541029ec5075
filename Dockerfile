# syntax=docker/dockerfile:1
#
# openim-callback-gateway: a small image holding the binary alone, run as a non-root user.
#
#   docker build -t openim-callback-gateway .
#   docker run --rm -p 10006:10006 -p 9090:9090 \
#     -v "$PWD/gateway.yaml:/etc/openim-callback-gateway/gateway.yaml:ro" \
#     -v openim-gateway-spool:/var/lib/openim-callback-gateway \
#     openim-callback-gateway
#
# BuildKit (the default builder of Docker 23+) is needed for the cache mounts. CI lints this file
# (.ci/deploy-check); deploy/kubernetes/ runs the image.

# ---- build: the official Rust image. No protoc: crates/contract/build.rs compiles the protos
# with protox (pure Rust).
FROM rust:1.95-slim-bookworm AS build

# `none` leaves out the line tables of Cargo.toml's release profile (about 63 MB of the 80 MB
# binary); the symbols stay, so a backtrace still names its functions. Build with
# `--build-arg DEBUG_INFO=line-tables-only` to keep file:line in backtraces.
ARG DEBUG_INFO=none
ENV CARGO_PROFILE_RELEASE_DEBUG=${DEBUG_INFO} \
    CARGO_TERM_COLOR=never

WORKDIR /src

# What cargo needs to read the workspace and build the gateway: the root package (it is the
# gateway), the two other workspace members it depends on (the contract crate and the Rust
# example service, which is its built-in default upstream), the protos the contract crate
# compiles, and the bench and example targets the manifest names: cargo refuses a manifest whose
# targets are missing, although it does not build them here.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto/ proto/
COPY crates/contract/ crates/contract/
COPY examples/rust/ examples/rust/
COPY benches/ benches/
COPY bench/spool_load.rs bench/spool_load.rs
COPY src/ src/

# The registry and target/ live in BuildKit cache mounts: a change to src/ recompiles the gateway,
# not its ~260 dependencies. target/ is a mount, so the binary is copied out in the same step.
# (build.rs records the git commit; .git is not in the build context, so the image says `unknown`.)
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked --bin openim-callback-gateway \
    && install -D -m 0755 target/release/openim-callback-gateway /out/openim-callback-gateway \
    && install -d -m 0750 /out/state

# ---- runtime: distroless "cc" (glibc and libgcc_s, which the binary links; no shell, no package
# manager), as its `nonroot` user 65532. Pin it by digest in production:
# gcr.io/distroless/cc-debian12:nonroot@sha256:...
FROM gcr.io/distroless/cc-debian12:nonroot

LABEL org.opencontainers.image.title="openim-callback-gateway" \
      org.opencontainers.image.description="Turns OpenIM webhook callbacks into typed gRPC calls" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=build /out/openim-callback-gateway /openim-callback-gateway
# The spool's parent, owned by the non-root user, so that `spool.dir:
# /var/lib/openim-callback-gateway/spool` works on a fresh Docker volume (Docker copies this
# ownership into it). In Kubernetes the PersistentVolumeClaim is mounted here (fsGroup 65532).
COPY --from=build --chown=65532:65532 /out/state /var/lib/openim-callback-gateway

# The config file: mount it here (deploy/kubernetes/ mounts the ConfigMap's gateway.yaml).
ENV OPENIM_GATEWAY_CONFIG=/etc/openim-callback-gateway/gateway.yaml

USER 65532:65532

# 10006: the callback port OpenIM's webhook `url` points at (`listen`).
# 9090: the admin port: /healthz, /readyz, /metrics, the spool admin API (`admin_listen`).
EXPOSE 10006 9090

ENTRYPOINT ["/openim-callback-gateway"]
