#!/usr/bin/env bash
# Builds the debian-12 AMI's root disk: Debian bookworm minbase by mmdebstrap, with systemd,
# udev, cloud-init, openssh-server, curl and iproute2, on a raw ext4 image made with `mke2fs -d`.
#
# - cloud-init reads kumo's metadata service as EC2's (datasource_list: [Ec2, None],
#   strict_id: false; ds-identify forced on, since a micro-VM has no DMI to identify a cloud by);
# - systemd-networkd runs DHCP on the first NIC; systemd-resolved takes the DNS servers it learns;
# - no password logins (root locked, sshd keys only, cloud-init's default user `admin` locked);
# - a serial console getty on ttyS0;
# - no per-instance secrets or identity in the image: no SSH host keys (made at first boot), an
#   empty /etc/machine-id (systemd makes one at first boot), no logs.
#
# The mirror is KUMO_DEBIAN_MIRROR (default http://deb.debian.org/debian, as in this host's apt
# sources), and the security suite comes from KUMO_DEBIAN_SECURITY_MIRROR.
source "$KUMO_RECIPE_DIR/lib/common.sh"

need mmdebstrap mmdebstrap
[[ $(id -u) -eq 0 ]] || die "building debian-12 needs root (mmdebstrap installs packages into a chroot): run as root"

mirror=${KUMO_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${KUMO_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
packages=(
  systemd systemd-sysv systemd-resolved udev dbus
  cloud-init openssh-server sudo
  curl ca-certificates iproute2 netbase
)
root=$KUMO_WORK/root

step "mmdebstrap: bookworm minbase + ${#packages[@]} packages from $mirror"
mmdebstrap --mode=root --variant=minbase --format=directory \
  --include="$(IFS=,; echo "${packages[*]}")" \
  --aptopt='Acquire::Retries "3"' \
  bookworm "$root" \
  "deb $mirror bookworm main" \
  "deb $mirror bookworm-updates main" \
  "deb $security bookworm-security main"

# What the mirror gave us: two builds with the same list must give the same disk.
chroot "$root" dpkg-query -W -f='${Package} ${Version}\n' | sort >"$KUMO_OUT/packages.txt"

step "configuring cloud-init, networkd, sshd and the serial console"
cp -R "$KUMO_RECIPE_DIR/debian-12/rootfs/." "$root/"
echo debian >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n' >"$root/etc/hosts"
printf '# <file system> <mount point> <type> <options> <dump> <pass>\n/dev/vda / ext4 rw,relatime,errors=remount-ro 0 1\n' >"$root/etc/fstab"
chroot "$root" systemctl enable systemd-networkd.service systemd-resolved.service ssh.service >/dev/null 2>&1
ln -sf /lib/systemd/system/serial-getty@.service \
  "$root/etc/systemd/system/getty.target.wants/serial-getty@ttyS0.service"
ln -sf ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"

step "checking the cloud-init configuration"
chroot "$root" cloud-init schema --config-file /etc/cloud/cloud.cfg.d/99-kumo.cfg
# No passwords anywhere: every account's password field is locked ('!...') or disabled ('*').
with_password=$(awk -F: '$2 !~ /^[!*]/ { print $1 }' "$root/etc/shadow")
[[ -z $with_password ]] || die "accounts with a password or an empty one in /etc/shadow: $with_password"

step "removing per-instance identity, caches and logs"
rm -f "$root"/etc/ssh/ssh_host_*
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root/var/lib/systemd/random-seed" \
  "$root/var/cache/ldconfig/aux-cache" "$root/var/cache/debconf/"*-old "$root/var/lib/dpkg/"*-old
find "$root/var/log" -type f -delete
rm -rf "$root/var/lib/apt/lists/"* "$root/var/cache/apt/"*.bin "$root/tmp/"* "$root/var/tmp/"*
mkdir -p "$root/var/lib/apt/lists/partial"

used_mib=$(tree_size_mib "$root")
# Room to install packages and run user-data; the control plane can grow the disk further and
# cloud-init's resizefs then grows the file system to fill it.
size_mib=$(((used_mib * 3 / 2 + 512 + 63) / 64 * 64))
step "making a ${size_mib} MiB ext4 root disk (${used_mib} MiB used)"
mkfs_ext4 "$root" "$KUMO_OUT/root.ext4" "$size_mib" debian-12
step "root disk ready"
