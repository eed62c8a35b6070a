# syntax=docker/dockerfile:1.7
# One image with every Meridian binary, built once; compose and k8s pick the
# binary with `command`. Build: `docker build -t meridian:dev .`
#
# Build stage: dependencies and the target directory live in BuildKit cache
# mounts, so an edit to one service rebuilds only what changed.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      --bin meridian \
      --bin meridian-agent-gateway \
      --bin meridian-inventory \
      --bin meridian-scheduler \
      --bin meridian-key-issuer \
      --bin meridian-proxy \
      --bin meridian-portal-sync \
      --bin meridian-agent \
 && mkdir -p /out \
 && cp target/release/meridian \
       target/release/meridian-agent-gateway \
       target/release/meridian-inventory \
       target/release/meridian-scheduler \
       target/release/meridian-key-issuer \
       target/release/meridian-proxy \
       target/release/meridian-portal-sync \
       target/release/meridian-agent /out/

# Runtime: slim Debian (glibc, CA roots for TLS to providers), non-root.
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/meridian --create-home meridian \
 && install -d -o 10001 -g 10001 /var/lib/meridian/data /var/lib/meridian/shared
COPY --from=build /out/ /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/meridian
ENV MERIDIAN_LOG=info
# Each service's REST port; the gateway's API traffic; agents' gRPC; the agent's probe.
EXPOSE 8000 8080 8081 8082 8083 8084 8085 50051 5959
CMD ["meridian", "--help"]
