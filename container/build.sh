#!/usr/bin/env bash
# Build the tsf-trt BIDS App image from container/Dockerfile, optionally its Apptainer image, and
# optionally run it on a phantom BIDS dataset (what tests/test_container.py checks).
#
#   container/build.sh [--variant cpu|gpu-cu12|gpu-cu13] [--base IMAGE] [--tag TAG]
#                      [--engine podman|docker] [--oci-archive FILE] [--sif FILE] [--test DIR]
#
# --base      the Dockerfile's BASE. Default: docker.io/library/debian:bookworm-slim when it can be
#             pulled; otherwise (no registry reachable) a local image made from Debian packages by
#             mmdebstrap (the same release, minbase, docs left out as Debian's slim image does).
# --oci-archive  also save the image as an OCI archive (what container/tsf-trt.def bootstraps from
#             where no Docker daemon runs).
# --sif       also build the Apptainer image FILE from container/tsf-trt.def (container/apptainer.sh:
#             with no apptainer on PATH, from a Debian sid chroot; Debian has apptainer in sid only).
# --test DIR  run the image as the BIDS App (as uid 4242, read-only root) on a 2-subject phantom
#             dataset in DIR (DIR/bids mounted read-only, DIR/out and DIR/cache writable), with --sif
#             the Apptainer image too (DIR/out-sif, HOME DIR/home-sif), and check what they left.
# The GPU variants install from NVIDIA's index (pypi.nvidia.com), which must be reachable. --test (which
# hands its folders to uid 4242) and --sif without apptainer installed (a chroot) need root.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VARIANT=cpu BASE="" TAG="" ENGINE="" OCI="" SIF="" TEST_DIR=""
PUBLIC_BASE=docker.io/library/debian:bookworm-slim
SUITE=bookworm
LOCAL_BASE=localhost/tsf-trt-base:$SUITE

while [ $# -gt 0 ]; do
  case "$1" in
    --variant) VARIANT="$2"; shift 2 ;;
    --base) BASE="$2"; shift 2 ;;
    --tag) TAG="$2"; shift 2 ;;
    --engine) ENGINE="$2"; shift 2 ;;
    --oci-archive) OCI="$2"; shift 2 ;;
    --sif) SIF="$2"; shift 2 ;;
    --test) TEST_DIR="$2"; shift 2 ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument '$1' (--help)" >&2; exit 2 ;;
  esac
done
case "$VARIANT" in cpu|gpu-cu12|gpu-cu13) ;; *) echo "build.sh: --variant cpu, gpu-cu12 or gpu-cu13" >&2; exit 2 ;; esac
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -n1)"
if [ -z "$TAG" ]; then
  TAG="localhost/tsf-trt:$VERSION"; [ "$VARIANT" = cpu ] || TAG="$TAG-$VARIANT"
fi
if [ -z "$ENGINE" ]; then
  if command -v podman >/dev/null; then ENGINE=podman
  elif command -v docker >/dev/null; then ENGINE=docker
  else echo "build.sh: neither podman nor docker is installed" >&2; exit 3; fi
fi
say() { printf '== %s\n' "$*" >&2; }

# Podman on some hosts cannot apply its default rlimits (no CAP_SYS_RESOURCE: "setrlimit
# RLIMIT_NOFILE: Operation not permitted") or crun refuses a cgroup v1/v2 hybrid ("cgroups in
# hybrid mode not supported"); then run with no default rlimits and runc, through a containers.conf
# of our own. The engine is tried on the base image before anything is built.
engine_works() { "$ENGINE" run --rm --network host --entrypoint /bin/true "$1" >/dev/null 2>"$2"; }
check_engine() {
  local log; log="$(mktemp)"
  if engine_works "$1" "$log"; then rm -f "$log"; return; fi
  if [ "$ENGINE" = podman ] && [ -z "${CONTAINERS_CONF:-}" ]; then
    say "podman cannot start a container as configured: $(tail -n1 "$log")"
    local conf="${TMPDIR:-/tmp}/tsf-trt-podman-$(id -u).conf"
    { printf '[containers]\ndefault_ulimits = []\n'
      if command -v runc >/dev/null; then printf '[engine]\nruntime = "runc"\n'; fi; } > "$conf"
    export CONTAINERS_CONF="$conf"
    say "retrying with CONTAINERS_CONF=$conf (no default rlimits$(command -v runc >/dev/null && echo ', runc'))"
    if engine_works "$1" "$log"; then rm -f "$log"; return; fi
  fi
  echo "build.sh: $ENGINE cannot run a container here: $(tail -n1 "$log")" >&2; rm -f "$log"; exit 4
}

# The base image: given, pulled, or made from Debian packages.
if [ -z "$BASE" ]; then
  if "$ENGINE" image inspect "$PUBLIC_BASE" >/dev/null 2>&1 || "$ENGINE" pull "$PUBLIC_BASE" >/dev/null 2>&1; then
    BASE="$PUBLIC_BASE"
  else
    BASE="$LOCAL_BASE"
    say "$PUBLIC_BASE cannot be pulled (no image registry reachable): base image from Debian packages, $BASE"
    if ! "$ENGINE" image inspect "$BASE" >/dev/null 2>&1; then
      command -v mmdebstrap >/dev/null || { echo "build.sh: no registry and no mmdebstrap (apt-get install mmdebstrap)" >&2; exit 3; }
      tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
      # minbase as Debian's slim image: no man pages, docs (copyright kept), locales or info.
      mmdebstrap --variant=minbase --include=ca-certificates \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        "$SUITE" "$tmp/base.tar" >&2
      "$ENGINE" import --change 'CMD ["/bin/bash"]' "$tmp/base.tar" "$BASE" >/dev/null
    fi
  fi
fi
check_engine "$BASE"

# pip inside the build verifies TLS with its own CA bundle; where a proxy inspects TLS, the host's
# bundle is needed: passed as the build secret `ca` (never stored in a layer).
build=("$ENGINE" build -f "$ROOT/container/Dockerfile" --network host -t "$TAG"
       --build-arg "BASE=$BASE" --build-arg "VARIANT=$VARIANT" --build-arg "VERSION=$VERSION")
CA="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
[ -s "$CA" ] && build+=(--secret "id=ca,src=$CA")
[ "$ENGINE" = podman ] && build+=(--ignorefile "$ROOT/container/Dockerfile.dockerignore")
say "${build[*]} $ROOT"
"${build[@]}" "$ROOT"
say "built $TAG: $("$ENGINE" image inspect --format '{{.Size}}' "$TAG") bytes"

if [ -n "$OCI" ] || [ -n "$SIF" ]; then
  archive="${OCI:-$(mktemp -u --suffix=.tar "${TMPDIR:-/tmp}/tsf-trt-XXXXXX")}"
  rm -f "$archive"
  if [ "$ENGINE" = podman ]; then "$ENGINE" save --format oci-archive -o "$archive" "$TAG"
  else "$ENGINE" save -o "$archive" "$TAG"; fi  # docker: a docker-archive
  say "saved $archive"
fi
if [ -n "$SIF" ]; then
  "$ROOT/container/apptainer.sh" build "$archive" "$SIF"
  [ -n "$OCI" ] || rm -f "$archive"
fi

if [ -n "$TEST_DIR" ]; then
  # The phantom is made by the image itself (tsf-trt phantom --layout bids) as its own user (1000).
  # The BIDS App runs as a uid the image does not know (4242, no home, as `-u "$(id -u)"` gives), on
  # a read-only root file system: only the mounted output and cache folders can be written.
  mkdir -p "$TEST_DIR"; TEST_DIR="$(realpath "$TEST_DIR")"
  rm -rf "$TEST_DIR/bids" "$TEST_DIR/out" "$TEST_DIR/cache" "$TEST_DIR/make"
  mkdir -p "$TEST_DIR/out" "$TEST_DIR/cache" "$TEST_DIR/make"
  chown 1000:1000 "$TEST_DIR/make"; chown 4242:4242 "$TEST_DIR/out" "$TEST_DIR/cache"
  run=("$ENGINE" run --rm --network none)
  "${run[@]}" -v "$TEST_DIR/make:/make" --entrypoint tsf-trt "$TAG" \
    phantom -o /make/bids --subjects 2 --shape 64 64 16 --layout bids --no-progress >&2
  mv "$TEST_DIR/make/bids" "$TEST_DIR/bids"; rmdir "$TEST_DIR/make"
  snapshot() { (cd "$TEST_DIR/bids" && find . -printf '%M %U %s %p\n' | sort && find . -type f -print0 | sort -z | xargs -0 sha256sum); }
  snapshot > "$TEST_DIR/input.before"
  say "running the BIDS App as uid 4242: $TAG /data /out participant --target t2"
  app=("${run[@]}" --read-only -u 4242:4242 -v "$TEST_DIR/bids:/data:ro" -v "$TEST_DIR/out:/out" -v "$TEST_DIR/cache:/cache" "$TAG")
  "${app[@]}" /data /out participant --target t2 --nprocs 1 --no-progress 2>&1 | tee "$TEST_DIR/participant.log" >&2
  "${app[@]}" /data /out group 2>&1 | tee "$TEST_DIR/group.log" >&2
  [ -z "$SIF" ] || "$ROOT/container/apptainer.sh" test "$SIF" "$TEST_DIR"
  snapshot > "$TEST_DIR/input.after"
  cmp -s "$TEST_DIR/input.before" "$TEST_DIR/input.after" || { echo "build.sh: the input dataset changed" >&2; exit 5; }
  for out in out ${SIF:+out-sif}; do
    n="$(find "$TEST_DIR/$out" -name '*_desc-tsfsynth_T2w.nii.gz' | wc -l)"
    [ "$n" = 2 ] || { echo "build.sh: $n syntheses in $TEST_DIR/$out, not 2" >&2; exit 5; }
  done
  for cache in cache ${SIF:+home-sif/.cache/tsf-trt}; do
    [ -n "$(find "$TEST_DIR/$cache" -type f 2>/dev/null | head -n1)" ] || { echo "build.sh: nothing in $TEST_DIR/$cache" >&2; exit 5; }
  done
  say "test passed: 2 syntheses in $TEST_DIR/out${SIF:+ and out-sif}, the input unchanged, the cache in $TEST_DIR/cache${SIF:+ and home-sif}"
fi
