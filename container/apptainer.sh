#!/usr/bin/env bash
# The Apptainer image of tsf-trt, made from the Docker image (container/tsf-trt.def), and a test
# run of it as the BIDS App; container/build.sh --sif calls this.
#
#   container/apptainer.sh build ARCHIVE SIF   ARCHIVE: from `podman save --format oci-archive` or
#                                              `docker save`; SIF: the image to write
#   container/apptainer.sh test SIF DIR        run SIF on DIR/bids (bound read-only) into DIR/out-sif,
#                                              HOME DIR/home-sif, as an unprivileged user
#
# Without apptainer on PATH (Debian has it in sid only; this needs root) both run it from a Debian
# sid chroot made by mmdebstrap ($APPTAINER_CHROOT, default /tmp/tsf-trt-apptainer-sid), entered by
# pivot_root in a mount namespace of its own: apptainer refuses a plain chroot ("weak chrooted
# environment"). As root the build skips %test (root's apptainer wants every capability, which a
# container or VM may lack) and `test` runs it, and the BIDS App, as uid 4242 through user namespaces.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHROOT="${APPTAINER_CHROOT:-${TMPDIR:-/tmp}/tsf-trt-apptainer-sid}"
TEST_UID=4242
say() { printf '== %s\n' "$*" >&2; }

make_chroot() {
  [ -x "$CHROOT/usr/bin/apptainer" ] && return
  command -v mmdebstrap >/dev/null || { echo "apptainer.sh: no apptainer, and no mmdebstrap to make a chroot with it" >&2; exit 3; }
  say "no apptainer on PATH: a Debian sid chroot with it, $CHROOT"
  rm -rf "$CHROOT"
  # sid's Release file may be past its Valid-Until on a mirror snapshot: not checked.
  mmdebstrap --variant=minbase --aptopt='Acquire::Check-Valid-Until "false"' --include=apptainer,ca-certificates \
    --customize-hook='echo "127.0.0.1 localhost" > "$1/etc/hosts"' \
    --customize-hook="chroot \"\$1\" useradd --uid $TEST_UID --create-home tsf-test" sid "$CHROOT" >&2
}

# in_apptainer_root DIR... -- CMD...: CMD with apptainer on PATH, the DIRs visible at their paths.
in_apptainer_root() {
  local binds=()
  while [ "$1" != -- ]; do binds+=("$(realpath "$1")"); shift; done; shift
  if command -v apptainer >/dev/null; then "$@"; return; fi
  make_chroot
  unshare --mount --propagation private bash -ec '
    root="$1" n="$2"; shift 2
    mount --bind "$root" "$root"
    for d in /proc /sys /dev "${@:1:$n}"; do mkdir -p "$root$d"; mount --rbind "$d" "$root$d"; done
    shift "$n"
    cd "$root"; mkdir -p .oldroot; pivot_root . .oldroot; umount -l /.oldroot; mount --make-rshared /; cd /
    exec "$@"' in_apptainer_root "$CHROOT" "${#binds[@]}" "${binds[@]}" "$@"
}

# What runs a command as the test user when this is root (apptainer then uses user namespaces).
as_user=(); [ "$(id -u)" = 0 ] && as_user=(setpriv --reuid "$TEST_UID" --regid "$TEST_UID" --clear-groups)

case "${1:-}" in
  build)
    [ $# = 3 ] || { echo "usage: apptainer.sh build ARCHIVE SIF" >&2; exit 2; }
    archive="$(realpath "$2")" sif="$(realpath -m "$3")"
    kind=docker-archive; tar -tf "$archive" oci-layout >/dev/null 2>&1 && kind=oci-archive
    notest=(); [ "$(id -u)" = 0 ] && notest=(--notest)
    in_apptainer_root "$ROOT" "$(dirname "$archive")" "$(dirname "$sif")" -- \
      apptainer build --force "${notest[@]}" --build-arg "BOOTSTRAP=$kind" --build-arg "IMAGE=$archive" \
      "$sif" "$ROOT/container/tsf-trt.def"
    say "built $sif: $(stat -c %s "$sif") bytes"
    ;;
  test)
    [ $# = 3 ] || { echo "usage: apptainer.sh test SIF DIR" >&2; exit 2; }
    sif="$(realpath "$2")" dir="$(realpath "$3")"
    [ -d "$dir/bids" ] || { echo "apptainer.sh: no $dir/bids (container/build.sh --test makes it)" >&2; exit 2; }
    rm -rf "$dir/out-sif" "$dir/home-sif"; mkdir -p "$dir/out-sif" "$dir/home-sif"
    [ "$(id -u)" = 0 ] && chown "$TEST_UID:$TEST_UID" "$dir/out-sif" "$dir/home-sif"
    in_apptainer_root "$(dirname "$sif")" "$dir" -- "${as_user[@]}" apptainer test --home "$dir/home-sif" "$sif"
    say "running the BIDS App in $sif as uid $(id -u | sed "s/^0$/$TEST_UID/"): /data /out participant --target t2"
    in_apptainer_root "$(dirname "$sif")" "$dir" -- "${as_user[@]}" apptainer run --cleanenv --home "$dir/home-sif" \
      -B "$dir/bids:/data:ro" -B "$dir/out-sif:/out" "$sif" /data /out participant --target t2 --nprocs 1 \
      --no-progress 2>&1 | tee "$dir/participant-sif.log" >&2
    ;;
  *) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 2 ;;
esac
