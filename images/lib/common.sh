# shellcheck shell=bash
# Helpers shared by the image recipes (sourced by images/*/build.sh).
#
# The recipes run under `kumo images build`, which sets:
#   KUMO_RECIPE_DIR  the directory holding the recipes (this file is $KUMO_RECIPE_DIR/lib/common.sh)
#   KUMO_WORK        a scratch directory for this build (removed afterwards)
#   KUMO_OUT         the directory the recipe writes its artefacts to (renamed into the catalog
#                    only if the recipe succeeds)
#   KUMO_IMAGE_NAME  the image being built (kernel, kumo-minimal, debian-12)
#   SOURCE_DATE_EPOCH  the fixed time every timestamp in the artefacts is clamped to
#   KUMO_JOBS        parallel jobs for make
# A line `::kumo-step:: TEXT` on stdout tells kumo's progress display which step is running.

set -euo pipefail
export LC_ALL=C
umask 022

: "${KUMO_WORK:?KUMO_WORK must be set (run through kumo images build)}"
: "${KUMO_OUT:?KUMO_OUT must be set (run through kumo images build)}"
: "${SOURCE_DATE_EPOCH:?SOURCE_DATE_EPOCH must be set}"

step() { printf '::kumo-step:: %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# need CMD PACKAGE: fails with the package to install when a tool is missing.
need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 not found: apt-get install $2 (or run scripts/install-deps)"
}

# fs_uuid NAME: a fixed UUID for NAME's file system, so that rebuilds are bit-identical.
fs_uuid() {
  printf 'kumo-fs-%s' "$1" | sha256sum |
    sed -E 's/^(.{8})(.{4}).(.{3}).(.{3})(.{12}).*/\1-\2-4\3-8\4-\5/'
}

# clamp_times DIR: every file's mtime and atime newer than SOURCE_DATE_EPOCH becomes it (the
# reproducible-builds "clamp"), so files made during the build carry no build time.
clamp_times() {
  find "$1" -newermt "@$SOURCE_DATE_EPOCH" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
}

# mkfs_ext4 ROOT IMG SIZE_MIB LABEL: a raw ext4 image IMG of SIZE_MIB MiB holding the tree ROOT,
# made by `mke2fs -d` (no mounts). Reproducible: fixed UUID and directory hash seed, superblock
# times from E2FSPROGS_FAKE_TIME, entries added in sorted order, and each inode's atime and
# ctime (which mke2fs copies from the source tree, and which no tool can set there) rewritten to
# SOURCE_DATE_EPOCH with debugfs. With KUMO_ROOT_OWNS_ALL=1 every inode is also given to root:root
# (so that a build by an ordinary user gives the same image). Fails if e2fsck finds the image unclean.
mkfs_ext4() {
  local root=$1 img=$2 size_mib=$3 label=$4 uuid
  need mke2fs e2fsprogs
  need debugfs e2fsprogs
  need e2fsck e2fsprogs
  uuid=$(fs_uuid "$label")
  clamp_times "$root"
  rm -f "$img"
  E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mke2fs -q -t ext4 -b 4096 -m 0 -L "$label" -U "$uuid" \
    -E "hash_seed=$uuid,root_owner=0:0,lazy_itable_init=0,nodiscard" \
    -d "$root" -F "$img" "${size_mib}M"
  # debugfs reads names through its own parser: quote each path and double any '"' in it.
  if [[ -n $(find "$root" -name $'*\n*' -print -quit) ]]; then
    die "a file name in $root contains a newline; debugfs cannot address it"
  fi
  local script=$KUMO_WORK/debugfs-times.txt
  (cd "$root" && find . -print0) | sort -z | tr '\0' '\n' |
    sed -e 's/^\.//' -e 's/^$/\//' -e 's/"/""/g' |
    awk -v t="$SOURCE_DATE_EPOCH" -v owner="${KUMO_ROOT_OWNS_ALL:-0}" '{
      printf "sif \"%s\" atime @%s\nsif \"%s\" ctime @%s\n", $0, t, $0, t
      if (owner == "1") printf "sif \"%s\" uid 0\nsif \"%s\" gid 0\n", $0, $0
    }' >"$script"
  local out
  out=$(E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH debugfs -w -f "$script" "$img" 2>&1 | grep -v '^debugfs' | grep -v '^sif ' || true)
  [[ -z $out ]] || die "debugfs could not set inode times: $out"
  e2fsck -fn "$img" >"$KUMO_WORK/e2fsck.log" 2>&1 || { cat "$KUMO_WORK/e2fsck.log"; die "e2fsck found errors in $img"; }
  touch -d "@$SOURCE_DATE_EPOCH" "$img"
}

# tree_size_mib ROOT: the apparent size of the tree in MiB, rounded up.
tree_size_mib() {
  du -s --block-size=1M "$1" | cut -f1
}
