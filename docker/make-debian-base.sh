#!/usr/bin/env bash
# A local base image for docker/Dockerfile.cpu where no image registry is
# reachable: Debian bookworm (python3 3.11, python3-venv, ca-certificates) made
# with debootstrap and imported into podman's storage.
#   bash docker/make-debian-base.sh [IMAGE]    (default localhost/debian-py311:bookworm)
#   podman build --build-arg BASE=localhost/debian-py311:bookworm -f docker/Dockerfile.cpu .
# Needs root, debootstrap and podman (Debian packages); the mirror is
# $DEBIAN_MIRROR (default http://deb.debian.org/debian). About 2.5 min, 200 MB.
set -euo pipefail
image=${1:-localhost/debian-py311:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$(mktemp -d "${TMPDIR:-/var/tmp}/rlft-base.XXXXXX")
cleanup() {
  # debootstrap mounts proc/sys inside while it works; never delete through them.
  for m in proc sys dev/pts dev; do umount -l "$root/$m" 2>/dev/null || true; done
  rm -rf --one-file-system "$root"
}
trap cleanup EXIT
chmod 755 "$root"  # becomes the image's /; mktemp made it 0700
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
  bookworm "$root" "$mirror"
chroot "$root" apt-get clean
rm -rf "${root:?}"/var/lib/apt/lists/*
tar -C "$root" -c . | podman import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$image"
echo "base image $image"
