# syntax=docker/dockerfile:1
# weir's container image: the `weir` binary on Debian bookworm (slim), run as the non-root user
# 10001, with the example pipelines under /etc/weir/examples. BuildKit is needed (the default
# builder since Docker 23) for the cache mounts.
#
#   docker build --build-arg WEIR_GIT_REV="$(git rev-parse --short=12 HEAD)" -t weir:0.1.0 .
#       (REGISTRY/weir:0.1.0 to push it; without the argument `weir --version` says "unknown")
#   docker run --rm -p 127.0.0.1:8080:8080 -p 127.0.0.1:5433:5433 weir:0.1.0
#       the quickstart: sample events -> windows and a view, then SQL until stopped:
#       curl -s 127.0.0.1:8080/sql -d "SELECT * FROM datasets LIMIT 5"
#   docker run --rm -v "$PWD:/work:ro" weir:0.1.0 validate /work/pipeline.yaml
#
# Outputs of relative paths in the examples land in /var/lib/weir/out (the working directory
# /var/lib/weir is the place for a volume). The health check asks GET /health on
# 127.0.0.1:$WEIR_HEALTH_PORT (default 8080): a pipeline serving its HTTP endpoint elsewhere
# sets WEIR_HEALTH_PORT; one without `serve` runs with --no-healthcheck.

FROM rust:1-bookworm AS builder
# librdkafka is built from its bundled sources (configure and make, no cmake): a C toolchain,
# and OpenSSL's and zlib's headers, found through pkg-config, for its ssl and libz features.
# Most are in the rust image already; listed so that a slimmer base keeps building.
# DL3008 (unpinned apt versions): bookworm's point and security releases replace the pinned
# versions in its archive, so a pin breaks the build within weeks; the base tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential pkg-config libssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The revision `weir --version` shows (cli/build.rs): the context has no .git to ask.
ARG WEIR_GIT_REV=""
# The registry and the target folder are cache mounts: a rebuild after a source change
# recompiles the workspace's crates, not DataFusion. The binary leaves the cached target folder
# in the same step. The release profile strips debug info (Cargo.toml, [profile.release]).
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git/db,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    WEIR_GIT_REV="$WEIR_GIT_REV" cargo build --release --locked -p weir-cli \
    && install -D -m 0755 target/release/weir /out/weir

FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="weir" \
      org.opencontainers.image.description="weir, a stream-processing engine: YAML pipelines, Arrow and DataFusion, SQL on live state" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0"
# The binary links glibc, OpenSSL 3 (librdkafka's TLS) and zlib (in the base image);
# ca-certificates for TLS to brokers, registries, object stores and Elasticsearch. Unpinned
# as above (DL3008): a rebuild picks up bookworm's security fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 weir \
    && useradd --uid 10001 --gid 10001 --no-log-init --no-create-home \
        --home-dir /var/lib/weir --shell /usr/sbin/nologin weir \
    && install -d -o 10001 -g 10001 /var/lib/weir /var/lib/weir/out
COPY --from=builder /out/weir /usr/local/bin/weir
COPY LICENSE /usr/share/doc/weir/LICENSE
COPY pipelines/examples/ /etc/weir/examples/
# The examples write `${WEIR_OUT:-out}/...` relative to their own folder, which is read-only:
# WEIR_OUT sends their outputs to the writable folder, and `out` points there too for the
# example whose paths are fixed (kafka.yaml).
RUN ln -s /var/lib/weir/out /etc/weir/examples/out

USER 10001:10001
WORKDIR /var/lib/weir
# WEIR_HTTP/WEIR_PG: the quickstart's SQL endpoints on every interface of the container, so that
# published ports reach them. A panic prints its backtrace (function names: the binary keeps
# its symbols); RUST_LIB_BACKTRACE=0 keeps errors (anyhow) from capturing one each.
ENV WEIR_OUT=/var/lib/weir/out \
    WEIR_HTTP=0.0.0.0:8080 \
    WEIR_PG=0.0.0.0:5433 \
    RUST_BACKTRACE=1 \
    RUST_LIB_BACKTRACE=0
# serve.http (HTTP: /sql, /health, /ready, /metrics) and serve.postgres (Postgres wire protocol)
EXPOSE 8080 5433
# No curl in the image: bash's /dev/tcp sends the request (the endpoint is plain HTTP on
# loopback) and the status line must say 200.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["bash", "-c", "exec 3<>\"/dev/tcp/127.0.0.1/${WEIR_HEALTH_PORT:-8080}\" && printf 'GET /health HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && read -r -t 5 _ code _ <&3 && [ \"$code\" = 200 ]"]
ENTRYPOINT ["weir"]
# The quickstart, serving its SQL until stopped. --insecure: it has no token or password, and
# its SQL endpoints listen beyond loopback (publish them on 127.0.0.1 as above). A real
# pipeline replaces this: `docker run weir:0.1.0 run /etc/weir/pipeline.yaml`.
CMD ["run", "/etc/weir/examples/quickstart.yaml", "--keep-serving", "--insecure"]
