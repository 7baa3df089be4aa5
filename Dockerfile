# Multi-stage build of both services; compose.yaml runs each from this image.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
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
