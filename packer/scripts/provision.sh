#!/bin/bash
# Runs inside the guest during `packer build` (as root, over the loopback-only SSH forward). The guest has no
# network: hsmca and its dependencies come from the uploaded wheelhouse, checked against its SHA256SUMS.
set -euo pipefail

BUILD=/root/build
WHEELS=$BUILD/wheelhouse
FILES=$BUILD/files

(cd "$WHEELS" && sha256sum --strict --quiet -c SHA256SUMS)

# The CA's software: a venv in /opt (read-only at run time), installed only from the wheelhouse, hashes required.
python3 -m venv /opt/hsmca/venv
/opt/hsmca/venv/bin/pip install --no-index --no-cache-dir --find-links "$WHEELS" --require-hashes \
	-r "$WHEELS/requirements.txt"
/opt/hsmca/venv/bin/hsmca --version

printf 'HSMCA_VERSION=%s\n' "$(/opt/hsmca/venv/bin/hsmca --version | awk '{print $NF}')" >> /etc/hsmca-release

# The service user (made by disk.sh with fixed ids, which the data disk's ownership relies on); its home is the
# CA's home on the data disk (bound to /var/lib/hsmca).
[ "$(id -u hsmca):$(id -g hsmca)" = 950:950 ] || { echo "the hsmca user is not 950:950" >&2; exit 1; }
install -d -m 0700 -o hsmca -g hsmca /var/lib/hsmca

for unit in hsmca.service hsmca-config.service hsmca-init.service hsmca-break-glass.service; do
	install -m 0644 "$FILES/$unit" "/etc/systemd/system/$unit"
done
install -m 0644 "$FILES/nftables.conf" /etc/nftables.conf
install -d -m 0755 /etc/hsmca
install -d -m 0750 /etc/audit/rules.d
install -m 0640 "$FILES/hsmca.rules" /etc/audit/rules.d/hsmca.rules
augenrules  # compile rules.d into /etc/audit/audit.rules now: the root is read-only at run time
grep -q -- '-k hsmca-keys' /etc/audit/audit.rules || { echo "the audit rules did not compile" >&2; exit 1; }
install -D -m 0644 "$FILES/auditd-hsmca.conf" /etc/systemd/system/auditd.service.d/hsmca.conf
install -D -m 0644 "$FILES/journald.conf" /etc/systemd/journald.conf.d/hsmca.conf
install -D -m 0644 "$BUILD/README.md" /usr/share/doc/hsmca/README.md
install -D -m 0644 "$BUILD/packer-README.md" /usr/share/doc/hsmca/packer-README.md

systemctl enable nftables.service auditd.service systemd-timesyncd.service hsmca-config.service \
	hsmca-init.service hsmca.service hsmca-break-glass.service

# No console login unless the config disk enables break-glass (the kernel command line has systemd.getty_auto=0;
# hsmca-break-glass.service starts the gettys). Its logins and logouts go into the CA's audit trail.
systemctl disable getty@tty1.service
install -m 0755 "$FILES/hsmca-break-glass-audit" /usr/local/sbin/hsmca-break-glass-audit
grep -q hsmca-break-glass-audit /etc/pam.d/login ||
	echo 'session optional pam_exec.so quiet /usr/local/sbin/hsmca-break-glass-audit' >> /etc/pam.d/login

# Set-user-ID programs nobody on the appliance needs lose the bit (dpkg-statoverride keeps it so); what stays is
# packer/setuid-allowlist.txt, checked by `make image-check`.
for program in /usr/bin/chfn /usr/bin/chsh /usr/bin/newgrp /usr/bin/gpasswd /usr/bin/chage /usr/bin/expiry \
	/usr/bin/su /usr/bin/mount /usr/bin/umount /usr/sbin/unix_chkpwd; do
	if [ -e "$program" ] && ! dpkg-statoverride --list "$program" >/dev/null; then
		dpkg-statoverride --update --add root root 0755 "$program"
	fi
done

# Nobody logs in as root: the emergency path is a named break-glass account, off by default.
passwd --lock root
