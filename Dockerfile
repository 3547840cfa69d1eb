# syntax=docker/dockerfile:1
#
# tracemesh: one image, one binary, every subcommand (proxy, init, inject, webhook, demo).
#
#   docker build -t tracemesh:0.1.0 .
#
# Image choice (the trade-off):
# - The `init` subcommand shells out to `iptables-restore`, so *some* image the pod runs must
#   carry iptables. We ship one image for the sidecar, the init container and the webhook, so a
#   cluster pulls one digest per node and the three can never drift apart in version.
# - That rules out distroless/scratch as the final stage (they cannot hold iptables and its
#   shared libraries without re-creating a distro by hand), so the final stage is
#   debian:bookworm-slim plus the `iptables` package only: ~80 MB instead of ~25 MB, and a
#   larger CVE surface (iptables, libnftnl, libmnl, glibc) than a static binary alone.
# - Given glibc is in the final image anyway, the binary is built for glibc rather than musl:
#   a static musl build would save nothing here, and musl's allocator is markedly slower under a
#   multi-threaded proxy's allocation pattern.
# - The default user is the unprivileged proxy UID 2102 (the UID `tracemesh init` exempts from
#   redirection, and the chart's `proxy.uid`). Only the injected init container overrides it
#   with runAsUser 0 plus the NET_ADMIN and NET_RAW capabilities; the sidecar and the webhook
#   run as 2102 with a read-only root filesystem and no capabilities.
# - Alternative if image size or CVE count matters more than one image: split into a
#   distroless `gcr.io/distroless/cc-debian12:nonroot` image for proxy/webhook and this one
#   for init only (the chart's values can point the init container at a second image).
#
# Both `iptables-nft` and `iptables-legacy` are installed (bookworm's default alternative is
# nft); `tracemesh init --iptables iptables-legacy` selects the legacy backend for nodes whose
# kernel lacks nf_tables.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# Manifests first, then sources: the dependency download is cached until Cargo.lock changes.
COPY Cargo.toml Cargo.lock ./
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo fetch --locked
# Cargo.toml names benches and tests as targets, so they are part of the build context (the
# files are small); nothing from them ends up in the final image.
COPY src ./src
COPY benches ./benches
COPY tests ./tests
COPY examples ./examples
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tracemesh \
 && install -D -m 0755 target/release/tracemesh /out/tracemesh

FROM debian:${DEBIAN_RELEASE}-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 2102 tracemesh \
 && useradd --system --uid 2102 --gid 2102 \
      --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin tracemesh
COPY --from=builder /out/tracemesh /usr/local/bin/tracemesh
LABEL org.opencontainers.image.title="tracemesh" \
      org.opencontainers.image.description="Kubernetes sidecar proxy that traces every hop" \
      org.opencontainers.image.licenses="Apache-2.0"
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 2102:2102
# proxy inbound, outbound, admin; webhook
EXPOSE 4143 4140 4191 8443
ENTRYPOINT ["/usr/local/bin/tracemesh"]
CMD ["proxy"]
