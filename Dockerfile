# Builds both services; compose.yaml runs each from this image.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ingest -p forwarder

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/router --create-home router
COPY --from=build /src/target/release/ingest /src/target/release/forwarder /usr/local/bin/
USER router
WORKDIR /var/lib/router
