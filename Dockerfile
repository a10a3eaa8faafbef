# syntax=docker/dockerfile:1
# Tally's binaries in one image; docker-compose.yml runs each service from it with a different
# command. Build: docker build -t tally:local .
# curl is for the compose healthchecks (GET /readyz on each service's metrics port); the fonts
# are what invoice PDFs embed (subset) for text outside Latin-1 (docs/INVOICING.md).

# --- build ---------------------------------------------------------------------------------
FROM rust:1.89-bookworm AS builder
WORKDIR /src
COPY . .
# The cache mounts keep the registry and target/ between builds (BuildKit). The test crates
# are left out: they enable tally-platform's `testkit` feature, which would then be compiled
# into every binary.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --exclude tally-e2e --exclude tally-benches --bins \
    && mkdir -p /out \
    && for bin in tally-migrate tally-access tally-aggregator tally-gateway tally-rater tally-invoicer \
               tally-payments tally-agents; do \
           cp "target/release/$bin" /out/; \
       done

# --- runtime -------------------------------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
       fonts-dejavu-core fonts-droid-fallback \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app tally
WORKDIR /app
COPY --from=builder /out/ /usr/local/bin/
# The binaries embed the migrations; the files are here for reference and for operators.
COPY config/ /app/config/
COPY migrations/ /app/migrations/
# The dev profile by default; docker-compose.yml picks config/profiles/<TALLY_PROFILE>.toml.
ENV TALLY_CONFIG=/app/config/profiles/dev.toml
USER tally
CMD ["tally-aggregator"]
