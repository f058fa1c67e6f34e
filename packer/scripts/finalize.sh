#!/bin/bash
# Packer's shutdown command: what must be the last thing done in the guest. The build-time SSH server goes
# (this session survives: sshd's children outlive its purge), packages are held, package sources removed, the
# root file system is made read-only, the machine identity emptied; then the guest powers off.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
apt-get purge -y -qq openssh-server openssh-sftp-server openssh-client
# `--auto-remove` could take procps and others along: remove only what the purge left unneeded, by name.
rm -rf /root/.ssh /etc/ssh/ssh_host_* /root/build

dpkg-query -W -f='${Package}\n' | xargs apt-mark hold >/dev/null
rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*
apt-get clean
rm -rf /var/lib/apt/lists/*

# The build's DHCP network goes: from now on the config disk says (hsmca-config.service renders it under /run).
rm -f /etc/systemd/network/50-wired.network

# Read-only root from the next boot on. The CA's state and the logs live on the data disk (GPT partition named
# hsmca-data, shipped as hsmca-data.qcow2): an upgrade replaces this system disk and keeps that one.
sed -i -E 's#^(\S+\s+/\s+\S+\s+)(\S+)#\1ro,\2#' /etc/fstab
cat >> /etc/fstab <<'FSTAB'
PARTLABEL=hsmca-data  /data           ext4   defaults,noatime,nodev,nosuid,noexec       0 2
/data/hsmca           /var/lib/hsmca  none   bind,x-systemd.requires-mounts-for=/data   0 0
/data/log             /var/log        none   bind,x-systemd.requires-mounts-for=/data   0 0
FSTAB

: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
journalctl --relinquish-var  # journald writes to /run from now on: nothing of the build stays on disk
find /var/log -type f -delete  # no build log ships in the image
sync
systemctl poweroff
