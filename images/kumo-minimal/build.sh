#!/usr/bin/env bash
# Builds the kumo-minimal AMI's root disk: busybox-static plus kumo-agent as /sbin/init, on a
# 16 MiB raw ext4 image made with `mke2fs -d`.
#
# KUMO_AGENT names a static kumo-agent binary (from agent/build-static); it is installed as
# /usr/bin/kumo-agent with /sbin/init a hard link to it. When KUMO_AGENT is empty, busybox init
# stands in (/etc/inittab runs /etc/init.d/rcS: mounts, loopback, DHCP on eth0 with udhcpc) and
# the image says so in its description.
source "$KUMO_RECIPE_DIR/lib/common.sh"

busybox=${KUMO_BUSYBOX:-/bin/busybox}
[[ -x $busybox ]] || die "$busybox not found: apt-get install busybox-static"
need readelf binutils
is_static() { ! readelf -l "$1" 2>/dev/null | grep -q 'program interpreter'; }
is_static "$busybox" || die "$busybox is dynamically linked: apt-get install busybox-static (not busybox)"

root=$KUMO_WORK/root
step "assembling the root file system"
mkdir -p "$root"
for d in bin sbin etc etc/init.d dev proc sys run tmp root mnt var var/log usr/bin usr/sbin \
  usr/share/udhcpc home; do
  mkdir -p "$root/$d"
done
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"
ln -s ../run "$root/var/run"
install -m 0755 "$busybox" "$root/bin/busybox"
# One symlink per applet, where the applet's path is still free.
"$busybox" --list-full | sort | while IFS= read -r applet; do
  [[ -e $root/$applet || -L $root/$applet ]] && continue
  [[ $applet == sbin/init || $applet == linuxrc ]] && continue
  # The link is relative and computed from the path's depth alone: realpath would resolve the
  # host's own /bin, which on a merged-/usr host is usr/bin and would make /usr/bin links dangle.
  up=${applet//[!\/]/}
  up=${up//\//../}
  ln -s "${up}bin/busybox" "$root/$applet"
done
# Every link must resolve inside the image (checked here, where a mistake is cheap to see).
while IFS= read -r -d '' link; do
  target=$(readlink "$link")
  case $target in
    /*) resolved=$root$target ;;
    *) resolved=$(dirname "$link")/$target ;;
  esac
  [[ -e $resolved ]] || die "dangling symlink in kumo-minimal: ${link#"$root"} -> $target"
done < <(find "$root" -type l -print0)
cp -R "$KUMO_RECIPE_DIR/kumo-minimal/rootfs/." "$root/"
chmod 0755 "$root/etc/init.d/rcS" "$root/usr/share/udhcpc/default.script"
chmod 0640 "$root/etc/shadow"
ln -s ../run/resolv.conf "$root/etc/resolv.conf"

if [[ -n ${KUMO_AGENT:-} ]]; then
  step "installing kumo-agent as /sbin/init"
  [[ -f $KUMO_AGENT ]] || die "kumo-agent binary $KUMO_AGENT not found"
  is_static "$KUMO_AGENT" || die "$KUMO_AGENT is dynamically linked: kumo-minimal needs a static kumo-agent (agent/build-static)"
  install -m 0755 "$KUMO_AGENT" "$root/usr/bin/kumo-agent"
  ln "$root/usr/bin/kumo-agent" "$root/sbin/init"
  rm -f "$root/etc/inittab" "$root/etc/init.d/rcS"
else
  step "no kumo-agent: busybox init stands in as /sbin/init"
  ln -s ../bin/busybox "$root/sbin/init"
fi

size_mib=16
need_mib=$(($(tree_size_mib "$root") * 5 / 4 + 4))
((need_mib > size_mib)) && size_mib=$need_mib
step "making a ${size_mib} MiB ext4 root disk"
KUMO_ROOT_OWNS_ALL=1 mkfs_ext4 "$root" "$KUMO_OUT/root.ext4" "$size_mib" kumo-minimal
step "root disk ready"
