# syntax=docker/dockerfile:1
#
# InstantChat images, one target per service:
#
#   docker build --target ingest      -t instantchat-ingest .
#   docker build --target gateway     -t instantchat-gateway .
#   docker build --target instantchat -t instantchat .      # both in one process (`serve`)
#
# Builder and runtime are the same Debian release (12, bookworm), so the binaries link against the
# glibc they run with. Dependencies are compiled in their own layer from a cargo-chef recipe (only
# the Cargo manifests and the lockfile), so a source change rebuilds the workspace crates only.
# Docs: docs/deploy.md. Checked by scripts/validate-deploy (hadolint).

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# --- toolchain: Rust and cargo-chef (the console's socket.io-client bundle is committed in web/)
FROM ${RUST_IMAGE} AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

# --- recipe: the dependency graph only; changes when a manifest or Cargo.lock changes
FROM chef AS planner
COPY Cargo.toml Cargo.lock ./
COPY crates crates
COPY vendor vendor
RUN cargo chef prepare --recipe-path recipe.json

# --- build: dependencies from the recipe (cached layer), then the workspace
FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# The patched dependencies (vendor/README.md) are built with the other dependencies.
COPY vendor vendor
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    cargo chef cook --release --locked --recipe-path recipe.json
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY web web
COPY crates crates
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    cargo build --release --locked --bins \
 && install -D -m 0755 -t /out \
      target/release/instantchat-ingest target/release/instantchat-gateway target/release/instantchat

# --- runtime base: slim Debian, CA certificates (tls:// NATS URLs), an unprivileged user
FROM ${RUNTIME_IMAGE} AS runtime
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 instantchat \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin instantchat
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /
ENV LOG_FORMAT=json
# The gateway drains on SIGTERM (SHUTDOWN_TIMEOUT_SECS); ingest finishes in-flight webhooks.
STOPSIGNAL SIGTERM

FROM runtime AS ingest
COPY --from=builder /out/instantchat-ingest /usr/local/bin/instantchat-ingest
ENV PORT=8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/instantchat-ingest"]

FROM runtime AS gateway
COPY --from=builder /out/instantchat-gateway /usr/local/bin/instantchat-gateway
ENV PORT=3000
EXPOSE 3000
ENTRYPOINT ["/usr/local/bin/instantchat-gateway"]

FROM runtime AS instantchat
COPY --from=builder /out/instantchat /usr/local/bin/instantchat
ENV PORT=3000
EXPOSE 3000
ENTRYPOINT ["/usr/local/bin/instantchat"]
CMD ["serve"]
