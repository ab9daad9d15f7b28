#
# InstantChat images, one target per service; each target compiles only its own binary:
#
#   docker build --target ingest      -t instantchat-ingest .
#   docker build --target gateway     -t instantchat-gateway .
#   docker build --target instantchat -t instantchat .      # both in one process (`serve`)
#
# Needs BuildKit (the default builder since Docker 23; DOCKER_BUILDKIT=1 before) for its cache
# mounts. There is no `# syntax=` line on purpose: the builder's own Dockerfile frontend handles
# everything here, so no frontend image is pulled and the build also works on a machine that
# reaches no image registry (given the two base images below).
#
# Builder and runtime are the same Debian release (12, bookworm), so the binaries link against the
# glibc they run with. Both base images are build arguments, for a mirror or a locally built image
# of the same release (`--build-arg RUST_IMAGE=...`; docker-compose.yml passes RUST_IMAGE and
# RUNTIME_IMAGE through). Crates and compiled dependencies live in cache mounts (the registry and
# target/), so a rebuild compiles only what changed, and the three targets share them.
# Docs: docs/deploy.md. Checked by scripts/validate-deploy (hadolint).

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# --- the workspace's sources (Cargo.toml's path dependencies: crates/, vendor/; proto/ for
#     crates/event's build script; web/ for the console that crates/instantchat embeds, its
#     socket.io-client bundle committed: no Node needed)
FROM ${RUST_IMAGE} AS sources
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY vendor vendor
COPY web web
COPY crates crates

# --- one package per stage, so an image carries (and a build compiles) only its own binary.
#     The cache mounts are shared between the stages; `sharing=locked` makes two builds of this
#     file that run at once take turns on target/ instead of corrupting it.
FROM sources AS build-ingest
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p instantchat-ingest --bin instantchat-ingest \
 && install -D -m 0755 target/release/instantchat-ingest /out/instantchat-ingest

FROM sources AS build-gateway
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p instantchat-gateway --bin instantchat-gateway \
 && install -D -m 0755 target/release/instantchat-gateway /out/instantchat-gateway

FROM sources AS build-instantchat
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p instantchat --bin instantchat \
 && install -D -m 0755 target/release/instantchat /out/instantchat

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
COPY --from=build-ingest /out/instantchat-ingest /usr/local/bin/instantchat-ingest
ENV PORT=8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/instantchat-ingest"]

FROM runtime AS gateway
COPY --from=build-gateway /out/instantchat-gateway /usr/local/bin/instantchat-gateway
ENV PORT=3000
EXPOSE 3000
ENTRYPOINT ["/usr/local/bin/instantchat-gateway"]

FROM runtime AS instantchat
COPY --from=build-instantchat /out/instantchat /usr/local/bin/instantchat
ENV PORT=3000
EXPOSE 3000
ENTRYPOINT ["/usr/local/bin/instantchat"]
CMD ["serve"]
