# Multi-stage build of both services; compose.yaml builds this image once and
# runs it as ingest and as the forwarders.
#
# The dependencies are built in a layer of their own (cargo-chef: a recipe made
# of the manifests and Cargo.lock), so a change to the router's code rebuilds
# only the router's crates.
FROM rust:1.95-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.77
WORKDIR /src

FROM chef AS plan
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS build
COPY --from=plan /src/recipe.json recipe.json
# The build settings (SQLite's, see .cargo/config.toml) apply to the cooked
# dependencies too.
COPY .cargo .cargo
RUN cargo chef cook --release --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked -p ingest -p forwarder \
    && strip target/release/ingest target/release/forwarder

# Small runtime: Debian slim with CA certificates (TLS to Meta and CRMs) and
# curl for health checks, running as an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/router --create-home router
COPY --from=build /src/target/release/ingest /src/target/release/forwarder /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/router
EXPOSE 8080 9091
