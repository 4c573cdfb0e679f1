#!/usr/bin/env bash
# Builds the images orch needs from local parts only (no registry is needed):
#
#   deploy/images/build.sh test   orch/busybox:test  a tiny image from Debian's busybox-static
#                                 (a shell, httpd, nc, sleep...), for the tests and the benchmark
#   deploy/images/build.sh base   orch/base:bookworm  Debian 12 (debootstrap, minbase) with
#                                 python3, for running orch itself (the Compose harness)
#   deploy/images/build.sh all    both
#
# An image that exists already is kept (--force rebuilds it). Each image also carries a tag
# naming its content (orch/busybox:<sha of the busybox binary>, orch/base:bookworm-<date>),
# so a changed input gives a new image. The image names are printed on stdout, one a line.
# Needs: a Docker engine, busybox-static (test), debootstrap and Debian's archive (base).
set -euo pipefail

FORCE=0
WHAT=()
for a in "$@"; do
  case "$a" in
    --force) FORCE=1 ;;
    test|base|all) WHAT+=("$a") ;;
    *) echo "usage: $0 [--force] test|base|all" >&2; exit 2 ;;
  esac
done
[ ${#WHAT[@]} -eq 0 ] && WHAT=(test)

log() { printf '==> %s\n' "$*" >&2; }
have_image() { [ "$FORCE" = 0 ] && docker image inspect "$1" >/dev/null 2>&1; }
need() { command -v "$1" >/dev/null || { echo "$0: $1 is missing (apt-get install $2)" >&2; exit 1; }; }

build_test() {
  local bb=/bin/busybox
  need docker docker.io
  [ -x "$bb" ] && "$bb" --list >/dev/null 2>&1 \
    || { echo "$0: $bb is missing (apt-get install busybox-static)" >&2; exit 1; }
  local sum tag
  sum=$(sha256sum "$bb" | cut -c1-12)
  tag=orch/busybox:$sum
  if ! have_image "$tag"; then
    log "building $tag from $bb"
    local root
    root=$(mktemp -d)
    trap 'rm -rf "$root"' RETURN
    mkdir -p "$root"/{bin,etc,tmp,root,var/www,usr,proc,sys,dev}
    chmod 1777 "$root/tmp"
    cp "$bb" "$root/bin/busybox"
    for applet in $("$bb" --list); do
      [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
    done
    ln -s ../bin "$root/usr/bin"; ln -s bin "$root/sbin"; ln -s ../bin "$root/usr/sbin"
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
      >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    echo 'orch test image' >"$root/var/www/index.html"
    tar --numeric-owner -C "$root" -c . | docker import \
      -c 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' -c 'CMD ["/bin/sh"]' \
      -c 'LABEL org.opencontainers.image.title=orch-test-busybox' -m "busybox-static $sum" \
      - "$tag" >/dev/null
  fi
  docker tag "$tag" orch/busybox:test
  echo orch/busybox:test
}

build_base() {
  need docker docker.io
  need debootstrap debootstrap
  local suite=bookworm mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
  local tag=orch/base:$suite-$(date +%Y%m%d)
  if have_image "orch/base:$suite"; then
    echo "orch/base:$suite"; return
  fi
  log "debootstrap $suite from $mirror (a minute or two)"
  local root
  root=$(mktemp -d)
  trap 'rm -rf "$root"' RETURN
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,tini \
    "$suite" "$root" "$mirror" >&2
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
  tar --numeric-owner -C "$root" -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
    -c 'ENTRYPOINT ["/usr/bin/tini", "--"]' -c 'CMD ["/bin/bash"]' \
    -c 'LABEL org.opencontainers.image.title=orch-base' -m "debootstrap $suite" \
    - "$tag" >/dev/null
  docker tag "$tag" "orch/base:$suite"
  echo "orch/base:$suite"
}

for w in "${WHAT[@]}"; do
  case "$w" in
    test) build_test ;;
    base) build_base ;;
    all) build_test; build_base ;;
  esac
done
