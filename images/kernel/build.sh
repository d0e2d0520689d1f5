#!/usr/bin/env bash
# Builds kumo's micro-VM kernel (an ELF vmlinux with a PVH entry) from Debian's linux-source-6.1.
#
#   make ARCH=x86_64 tinyconfig
#   scripts/kconfig/merge_config.sh (kumo.config on top)
#   make olddefconfig
#   check that every line of kumo.config holds in the final .config
#   make vmlinux
#
# Writes $KUMO_OUT/vmlinux and $KUMO_OUT/config. Reproducible: KBUILD_BUILD_TIMESTAMP, _USER,
# _HOST and _VERSION are fixed, and the build runs in a path that does not depend on $KUMO_HOME.
source "$KUMO_RECIPE_DIR/lib/common.sh"

fragment=$KUMO_RECIPE_DIR/kernel/kumo.config
tarball=${KUMO_LINUX_SOURCE:-/usr/src/linux-source-6.1.tar.xz}
[[ -f $tarball ]] || die "$tarball not found: apt-get install linux-source-6.1 (or run scripts/install-deps)"
for tool in make:make gcc:gcc flex:flex bison:bison bc:bc xz:xz-utils cpio:cpio perl:perl; do
  need "${tool%%:*}" "${tool#*:}"
done
[[ -e /usr/include/libelf.h ]] || die "libelf headers not found: apt-get install libelf-dev"
[[ -e /usr/include/openssl/ssl.h ]] || die "openssl headers not found: apt-get install libssl-dev"

export KBUILD_BUILD_TIMESTAMP
KBUILD_BUILD_TIMESTAMP=$(date -u -d "@$SOURCE_DATE_EPOCH" '+%Y-%m-%d')
export KBUILD_BUILD_USER=kumo KBUILD_BUILD_HOST=kumo KBUILD_BUILD_VERSION=1
jobs=${KUMO_JOBS:-$(nproc)}

step "extracting $(basename "$tarball")"
src=$KUMO_WORK/src
mkdir -p "$src"
tar -xf "$tarball" -C "$src" --strip-components=1
out=$KUMO_WORK/out
mkdir -p "$out"
cd "$src"

step "configuring: tinyconfig + images/kernel/kumo.config"
make -s O="$out" ARCH=x86_64 tinyconfig
scripts/kconfig/merge_config.sh -m -O "$out" "$out/.config" "$fragment"
make -s O="$out" ARCH=x86_64 olddefconfig

step "checking that every option of kumo.config ended up as asked"
missing=()
while IFS= read -r line; do
  case $line in
    CONFIG_*=*)
      grep -qxF -- "$line" "$out/.config" || missing+=("$line (got: $(grep -E "^(# )?${line%%=*}[= ]" "$out/.config" || echo absent))")
      ;;
    "# CONFIG_"*" is not set")
      opt=${line#\# }
      opt=${opt%% *}
      if grep -qE "^$opt=" "$out/.config"; then missing+=("$line (got: $(grep -E "^$opt=" "$out/.config"))"); fi
      ;;
  esac
done <"$fragment"
if ((${#missing[@]})); then
  printf 'kernel config: option did not stick (a dependency is missing from kumo.config): %s\n' "${missing[@]}" >&2
  die "${#missing[@]} option(s) of images/kernel/kumo.config did not end up in the final .config"
fi

step "compiling vmlinux with $jobs jobs"
make O="$out" ARCH=x86_64 -j"$jobs" vmlinux

cp "$out/vmlinux" "$KUMO_OUT/vmlinux"
cp "$out/.config" "$KUMO_OUT/config"
make -s O="$out" ARCH=x86_64 kernelrelease >"$KUMO_OUT/release"
touch -d "@$SOURCE_DATE_EPOCH" "$KUMO_OUT"/*
step "built $(cat "$KUMO_OUT/release")"
