# syntax=docker/dockerfile:1
#
# tracemesh: one image, one binary, every subcommand (proxy, init, inject, webhook, demo).
#
#   docker build -t tracemesh:0.1.0 .
#
# Image choice:
# - Final stage: distroless `cc-debian12` (glibc, CA certificates, no shell, no package
#   manager), plus the tracemesh binary and iptables for the `init` subcommand. One image for
#   the sidecar, the init container and the webhook, so a node pulls one digest and the three
#   never drift apart in version.
# - iptables comes from a bookworm stage: docker/iptables-rootfs.sh copies the iptables package
#   and exactly the libraries and xtables extensions it loads (~3 MB) into a root filesystem
#   that is copied over the distroless base, which is Debian 12 as well, so the glibc matches.
#   tests/image.rs runs that same script and `tracemesh init` chrooted into the result.
# - The binary is built for glibc (the base has it): musl's allocator is markedly slower under a
#   multi-threaded proxy's allocation pattern, and a static binary would save nothing here.
# - The default user is the unprivileged proxy UID 2102 (the UID `tracemesh init` exempts from
#   redirection, and the chart's `proxy.uid`). Only the injected init container overrides it
#   with runAsUser 0 plus the NET_ADMIN and NET_RAW capabilities; the sidecar and the webhook
#   run as 2102 with a read-only root filesystem and no capabilities.
#
# Both backends are in the image: `iptables` is the nft one (Debian's default);
# `tracemesh init --iptables iptables-legacy` selects legacy for nodes whose kernel lacks
# nf_tables. Legacy takes a lock file under /run, so with the injected init container's
# read-only root filesystem it needs /run to be writable (nft needs no lock file).

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
COPY build.rs ./
COPY src ./src
# benches/ also holds hot-symbols.txt, the code order build.rs gives the linker.
COPY benches ./benches
COPY tests ./tests
COPY examples ./examples
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tracemesh \
 && install -D -m 0755 target/release/tracemesh /out/tracemesh

FROM debian:${DEBIAN_RELEASE}-slim AS iptables
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/*
COPY docker/iptables-rootfs.sh /iptables-rootfs.sh
RUN sh /iptables-rootfs.sh /rootfs

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=iptables /rootfs/ /
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
