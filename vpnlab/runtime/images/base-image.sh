#!/usr/bin/env bash
# Makes the base image the node Dockerfile starts FROM, where no container registry can be
# reached: a Debian minbase tree (debootstrap) imported under the same name, so that the
# Dockerfile stays standard. With a reachable registry the image is simply pulled.
set -euo pipefail
image=${1:?usage: base-image.sh IMAGE (for example debian:bookworm-slim)}
suite=${2:-bookworm}

docker image inspect "$image" >/dev/null 2>&1 && exit 0
if timeout 60 docker pull -q "$image" >/dev/null 2>&1; then
  exit 0
fi
echo "no registry reachable for $image: building it with debootstrap ($suite, minbase)"
root=$(mktemp -d /var/tmp/vpnlab-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase "$suite" "$root" >"$root.log" 2>&1 || { tail -20 "$root.log"; exit 1; }
rm -f "$root.log"
# as slim as the registry's image: no package lists, caches or docs
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
tar -C "$root" -c . | docker import - "$image" >/dev/null
echo "imported $image"
