# Sluice container image: build with the same command as the README, run as non-root.
FROM rust:1.95-slim-bookworm AS build
# make builds the bundled jemalloc (tikv-jemalloc-sys).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
# The README's build command.
RUN cargo build --release --locked

FROM debian:bookworm-slim
# curl serves the HEALTHCHECK; versions follow the pinned Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin sluice \
    && mkdir -p /app /data \
    && chown sluice /data
WORKDIR /app
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
COPY schemas ./schemas
COPY transforms ./transforms
ENV SLUICE_HTTP_LISTEN=0.0.0.0:8080 \
    SLUICE_TCP_LISTEN=0.0.0.0:9000 \
    SLUICE_DATABASE_URL=sqlite:///data/sluice.db
VOLUME ["/data"]
USER 10001
EXPOSE 8080 9000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD ["curl", "-fsS", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["sluice"]
CMD ["serve"]
