#!/usr/bin/env bash
# Builds the images orch needs from local parts only (no registry is needed):
#
#   deploy/images/build.sh test   orch/busybox:test  a tiny image from Debian's busybox-static
#                                 (a shell, httpd, nc, sleep...), for the tests and the benchmark
#   deploy/images/build.sh base   orch/base:bookworm-r2  Debian 12 (debootstrap, minbase) with
#                                 python3, for running orch itself (the Compose harness)
#   deploy/images/build.sh wheels a folder of wheels: orch and every dependency, for offline
#                                 installs (deploy/install.sh --wheels DIR, the orch image)
#   deploy/images/build.sh orch   orch/orch:<source hash> (also tagged orch/orch:latest): orch in
#                                 /opt/orch on orch/base:bookworm-r2, installed offline from the wheels
#   deploy/images/build.sh systemd orch/systemd:bookworm  Debian 12 that boots systemd, with
#                                 python3: a host to test deploy/install.sh and the units on
#   deploy/images/build.sh etcd   orch/etcd:latest  the host's etcd and etcdctl (Debian's
#                                 etcd-server, etcd-client) on orch/base:bookworm-r2: the etcd
#                                 members of the Compose harness's HA profile
#   deploy/images/build.sh all    test, base and orch
#
# An image that exists already is kept (--force rebuilds it). Each image also carries a tag
# naming its content (orch/busybox:<sha of the busybox binary>, orch/base:bookworm-r2-<date>,
# orch/orch:<hash of the sources>, orch/etcd:<version>-<sha of the binaries>), so a changed
# input gives a new image. The image names
# (and the wheel folder) are printed on stdout, one a line.
# Needs: a Docker engine, busybox-static (test), debootstrap and Debian's archive (base),
# Python 3.11 with pip and an index to fetch the dependencies from (wheels; cached after),
# etcd-server (etcd).
set -euo pipefail

FORCE=0
WHAT=()
for a in "$@"; do
  case "$a" in
    --force) FORCE=1 ;;
    test|base|wheels|orch|systemd|etcd|all) WHAT+=("$a") ;;
    *) echo "usage: $0 [--force] test|base|wheels|orch|systemd|etcd|all" >&2; exit 2 ;;
  esac
done
[ ${#WHAT[@]} -eq 0 ] && WHAT=(test)

log() { printf '==> %s\n' "$*" >&2; }

locked() {
  # locked NAME CMD...: one build of NAME at a time on this machine. A second build.sh waits
  # here for the first and then finds the image made (./run test starts the slow builds in
  # the background while the first tests run, and the tests' own build.sh waits for them).
  local name=$1 fd rc
  shift
  mkdir -p "$CACHE"
  exec {fd}>"$CACHE/.lock-$name"
  flock "$fd"
  # in a subshell: the builders' RETURN traps (their temporary folders) stay theirs
  ( "$@" )
  rc=$?  # reached on failure only where errexit is off (after ||), as the call would be
  exec {fd}>&-
  return "$rc"
}

# The base image (Debian 12 with python3); -r2 also carries libnftables1 and conntrack for
# the routing mesh's kernel data plane. A new package list gets a new revision, so an image
# built from an older list is never taken for it.
BASE=orch/base:bookworm-r2
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
  local tag=$BASE-$(date +%Y%m%d)
  if have_image "$BASE"; then
    echo "$BASE"; return
  fi
  log "debootstrap $suite from $mirror (a minute or two)"
  local root
  root=$(mktemp -d)
  trap 'rm -rf "$root"' RETURN
  # libnftables1 and conntrack: the routing mesh's kernel data plane (lb.mode = "kernel")
  debootstrap --variant=minbase \
    --include=python3,python3-venv,ca-certificates,tini,libnftables1,conntrack \
    "$suite" "$root" "$mirror" >&2
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
  tar --numeric-owner -C "$root" -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
    -c 'ENTRYPOINT ["/usr/bin/tini", "--"]' -c 'CMD ["/bin/bash"]' \
    -c 'LABEL org.opencontainers.image.title=orch-base' -m "debootstrap $suite" \
    - "$tag" >/dev/null
  docker tag "$tag" "$BASE"
  echo "$BASE"
}

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${ORCH_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/orch-build}

python_for_wheels() {
  # The wheels must suit the image's Python (Debian 12: 3.11); the checkout's venv first.
  local py
  for py in "${PYTHON:-}" "$ROOT/.venv/bin/python" python3.11 python3; do
    [ -n "$py" ] && command -v "$py" >/dev/null || continue
    if "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      echo "$py"; return
    fi
  done
  echo "$0: no Python 3.11 to build wheels with (set PYTHON=)" >&2; exit 1
}

source_hash() {
  # What goes into orch's wheel: the packages' sources and the project metadata.
  (cd "$ROOT" && find orch agent controller orchctl -type f \( -name '*.py' -o -name '*.pyi' \) \
     -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs sha256sum; sha256sum pyproject.toml README.md) \
    | sha256sum | cut -c1-12
}

build_wheels() {
  # $CACHE/deps-<hash of pyproject.toml>: the dependencies (fetched once per change of it);
  # $CACHE/wheels-<source hash>: orch's wheel beside hard links to them. Prints the latter.
  local py src deps out tmp
  py=$(python_for_wheels)
  src=$(source_hash)
  out=$CACHE/wheels-$src
  if [ "$FORCE" = 1 ] || ! ls "$out"/orch-*.whl >/dev/null 2>&1; then
    deps=$CACHE/deps-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-12)
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' RETURN
    # build from a copy, so that no build/ or egg-info left in the checkout leaks in
    (cd "$ROOT" && tar -c --exclude=__pycache__ pyproject.toml README.md orch agent controller orchctl) \
      | tar -x -C "$tmp"
    mkdir -p "$tmp/wheels"
    log "building orch's wheel ($src) with $py"
    "$py" -m pip wheel -q --disable-pip-version-check --no-deps --wheel-dir "$tmp/wheels" "$tmp" >&2
    if [ "$FORCE" = 1 ] || [ ! -e "$deps/.complete" ]; then
      log "fetching the dependencies' wheels into $deps"
      rm -rf "$deps"; mkdir -p "$deps"
      "$py" -m pip wheel -q --disable-pip-version-check --wheel-dir "$deps" \
        --find-links "$tmp/wheels" "$(ls "$tmp"/wheels/orch-*.whl)" >&2
      rm -f "$deps"/orch-*.whl
      touch "$deps/.complete"
    fi
    rm -rf "$out"; mkdir -p "$out"
    cp "$tmp"/wheels/orch-*.whl "$out/"
    cp -l "$deps"/*.whl "$out/" 2>/dev/null || cp "$deps"/*.whl "$out/"
    # keep the three newest wheel folders
    ls -dt "$CACHE"/wheels-* | tail -n +4 | xargs -r rm -rf
  fi
  echo "$out"
}

build_orch() {
  need docker docker.io
  local src tag wheels cid
  src=$(source_hash)
  tag=orch/orch:$src
  if ! have_image "$tag"; then
    docker image inspect "$BASE" >/dev/null 2>&1 || locked base build_base >/dev/null
    wheels=$(locked wheels build_wheels)
    log "building $tag: orch into /opt/orch on $BASE, offline"
    cid=$(docker create --network none "$BASE" sh -c \
      'python3 -m venv /opt/orch && /opt/orch/bin/pip install -q --no-index --find-links /wheels orch && rm -rf /wheels /root/.cache')
    trap 'docker rm -f "$cid" >/dev/null 2>&1 || true' RETURN
    docker cp "$wheels/." "$cid:/wheels" >/dev/null
    docker start -a "$cid" >&2
    docker commit -m "orch $src" \
      -c 'ENV PATH=/opt/orch/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      -c 'WORKDIR /' -c 'CMD ["orchctl", "--help"]' \
      -c "LABEL org.opencontainers.image.title=orch orch.source-hash=$src" \
      "$cid" "$tag" >/dev/null
  fi
  docker tag "$tag" orch/orch:latest
  echo "$tag"
}

build_systemd() {
  # The root file system (debootstrap, a minute or two) is cached as a tarball in $CACHE,
  # so the image can be made again in seconds and need not be kept.
  need docker docker.io
  local suite=bookworm mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian} tag=orch/systemd:bookworm
  local tarball=$CACHE/systemd-$suite.tar
  if have_image "$tag"; then echo "$tag"; return; fi
  if [ "$FORCE" = 1 ] || [ ! -s "$tarball" ]; then
    need debootstrap debootstrap
    log "debootstrap $suite with systemd from $mirror (a minute or two)"
    local root
    root=$(mktemp -d)
    trap 'rm -rf "$root"' RETURN
    debootstrap --variant=minbase \
      --include=systemd,systemd-sysv,dbus,python3,python3-venv,iproute2,procps \
      "$suite" "$root" "$mirror" >&2
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
    # no getty, no network waits: a container boots straight to multi-user
    rm -f "$root"/etc/systemd/system/getty.target.wants/* \
      "$root"/etc/systemd/system/multi-user.target.wants/systemd-networkd* 2>/dev/null || true
    mkdir -p "$CACHE"
    tar --numeric-owner -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
  fi
  docker import -c 'ENV container=docker' \
    -c 'CMD ["/lib/systemd/systemd"]' -c 'LABEL org.opencontainers.image.title=orch-systemd' \
    -m "debootstrap $suite with systemd" "$tarball" "$tag" >/dev/null
  echo "$tag"
}

build_etcd() {
  # Debian's etcd is a Go binary linked against glibc only: it runs on the base image (the
  # same Debian), which also gives it a shell and python3 for health checks.
  need docker docker.io
  local etcd=/usr/bin/etcd etcdctl=/usr/bin/etcdctl version sum tag cid bins
  [ -x "$etcd" ] || { echo "$0: $etcd is missing (apt-get install etcd-server)" >&2; exit 1; }
  bins=("$etcd")
  [ -x "$etcdctl" ] && bins+=("$etcdctl")   # optional (etcd-client): for people, not the tests
  version=$("$etcd" --version | awk '/^etcd Version:/ {print $3}')
  sum=$(cat "${bins[@]}" | sha256sum | cut -c1-12)
  tag=orch/etcd:${version:-unknown}-$sum
  if ! have_image "$tag"; then
    docker image inspect "$BASE" >/dev/null 2>&1 || locked base build_base >/dev/null
    log "building $tag from ${bins[*]}"
    cid=$(docker create --network none "$BASE" true)
    trap 'docker rm -f "$cid" >/dev/null 2>&1 || true' RETURN
    for b in "${bins[@]}"; do docker cp "$b" "$cid:/usr/local/bin/" >/dev/null; done
    docker commit -m "etcd $version ($sum)" -c 'ENV ETCDCTL_API=3' -c 'WORKDIR /' \
      -c 'EXPOSE 2379 2380' -c 'CMD ["etcd", "--version"]' \
      -c "LABEL org.opencontainers.image.title=orch-etcd org.opencontainers.image.version=$version" \
      "$cid" "$tag" >/dev/null
  fi
  docker tag "$tag" orch/etcd:latest
  echo "$tag"
}

for w in "${WHAT[@]}"; do
  case "$w" in
    test) locked test build_test ;;
    base) locked base build_base ;;
    wheels) locked wheels build_wheels ;;
    orch) locked orch build_orch ;;
    systemd) locked systemd build_systemd ;;
    etcd) locked etcd build_etcd ;;
    all) locked test build_test; locked base build_base; locked orch build_orch ;;
  esac
done
