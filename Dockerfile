# syntax=docker/dockerfile:1
# One image per service: `--target ingest` or `--target gateway` (or `instantchat`).
# Builder and runtime are both Debian bookworm.
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
 && mkdir -p /out \
 && cp target/release/instantchat-ingest target/release/instantchat-gateway target/release/instantchat /out/

FROM debian:bookworm-slim AS runtime
RUN useradd --system --uid 10001 --no-create-home instantchat
USER 10001

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
EXPOSE 3000
ENTRYPOINT ["/usr/local/bin/instantchat", "serve"]
