// The hsmca appliance image. Packer boots a base disk assembled offline from Debian packages (scripts/disk.sh),
// provisions it over a loopback-only SSH forward with hsmca from a local wheelhouse, and finalises it as it shuts
// down (the build-time SSH server purged, packages held, no package sources, read-only root).
// Debian's packer 1.6.6: no `packer init`, no `firmware` option (OVMF is passed with qemuargs).

variable "base_disk" {
  type        = string
  description = "The base disk made by scripts/disk.sh (qcow2, GPT, UEFI)."
  default     = "build/base.qcow2"
}

variable "base_disk_checksum" {
  type        = string
  description = "The base disk's SHA-256, as scripts/disk.sh wrote it."
  default     = "file:build/base.qcow2.sha256"
}

variable "wheelhouse" {
  type        = string
  description = "hsmca and its dependencies as wheels, with SHA256SUMS and requirements.txt (scripts/wheelhouse.sh)."
  default     = "build/wheelhouse"
}

variable "output_directory" {
  type    = string
  default = "build/image"
}

variable "ssh_private_key_file" {
  type        = string
  description = "The throwaway build key whose public half scripts/disk.sh put in the base disk."
  default     = "build/build_key"
}

variable "ovmf" {
  type    = string
  default = "/usr/share/ovmf/OVMF.fd"
}

source "qemu" "hsmca" {
  disk_image       = true
  iso_url          = var.base_disk
  iso_checksum     = var.base_disk_checksum
  output_directory = var.output_directory
  vm_name          = "hsmca.qcow2"
  format           = "qcow2"
  skip_resize_disk = true  // the partitions are laid out by scripts/disk.sh
  accelerator      = "tcg" // no KVM on the build machines measured so far
  machine_type     = "q35"
  memory           = 2048
  cpus             = 2
  headless         = true
  disk_interface   = "virtio"
  net_device       = "virtio-net"
  qemuargs = [
    ["-bios", var.ovmf],
    // user networking, restricted: the guest reaches nothing; only the host's SSH forward (loopback) reaches it
    ["-netdev", "user,id=user.0,restrict=on,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22"],
  ]
  communicator         = "ssh"
  ssh_username         = "root"
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout          = "20m" // packer does not notice a dead qemu while it waits for SSH
  shutdown_command     = "bash /root/finalize.sh"
  shutdown_timeout     = "10m"
}

build {
  sources = ["source.qemu.hsmca"]

  provisioner "shell" {
    inline          = ["mkdir -p /root/build"]
    execute_command = "{{ .Vars }} bash '{{ .Path }}'" // the guest's /tmp is noexec
  }

  provisioner "file" {
    sources     = [var.wheelhouse, "${path.root}/files"]
    destination = "/root/build/"
  }

  // The operator's guides, for the units' Documentation= (the appliance has no network to look them up).
  provisioner "file" {
    source      = "${path.root}/../README.md"
    destination = "/root/build/README.md"
  }

  provisioner "file" {
    source      = "${path.root}/README.md"
    destination = "/root/build/packer-README.md"
  }

  provisioner "file" {
    source      = "${path.root}/scripts/finalize.sh"
    destination = "/root/finalize.sh"
  }

  provisioner "shell" {
    script          = "${path.root}/scripts/provision.sh"
    execute_command = "{{ .Vars }} bash '{{ .Path }}'" // the guest's /tmp is noexec
  }

  // SHA256SUMS and its signature are written after the build by scripts/release.sh, over the image and what
  // ships beside it (the data disk, the manifests).
  post-processor "manifest" {
    output = "${var.output_directory}/packer-manifest.json"
  }
}
