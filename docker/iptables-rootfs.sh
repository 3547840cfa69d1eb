#!/bin/sh
# Copies iptables (nft and legacy backends) and exactly the shared libraries and xtables
# extensions it loads out of a Debian system into DEST, laid out as a root filesystem to be
# copied over a distroless base (which brings glibc). The Dockerfile's iptables stage runs it;
# tests/image.rs runs it on the test machine and proves the result works in a chroot.
#
#   sh docker/iptables-rootfs.sh DEST
set -eu
dest=$1
pkgs="iptables libxtables12 libip4tc2 libip6tc2 libmnl0 libnftnl11 libnetfilter-conntrack3 libnfnetlink0"
mkdir -p "$dest"
for p in $pkgs; do
    # Package names carry the architecture in multi-arch listings (libmnl0:amd64).
    dpkg -L "$p" 2>/dev/null || dpkg -L "$p:$(dpkg --print-architecture)"
done | while read -r f; do
    case "$f" in
        /usr/share/*|/etc/*) continue ;;
    esac
    # Files and symlinks only; directories are made as needed.
    if [ -f "$f" ] || [ -L "$f" ]; then
        mkdir -p "$dest$(dirname "$f")"
        cp -a "$f" "$dest$f"
    fi
done
# Debian picks the backend with update-alternatives (symlinks under /etc/alternatives, which
# dpkg -L does not list). The image defaults to nft, like Debian; `tracemesh init --iptables
# iptables-legacy` picks the other one by name.
for t in iptables ip6tables; do
    for suffix in "" -restore -save; do
        ln -sf "$t-nft$suffix" "$dest/usr/sbin/$t$suffix"
    done
done
# netbase's protocol names, which iptables resolves ("-p tcp").
mkdir -p "$dest/etc"
cp /etc/protocols "$dest/etc/protocols"
