# The two commands of the README: `make run` (a dev CA on SoftHSM + SQLite) and `make test`.
# Both work on a fresh Debian machine: as root they install the system packages they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HSMCA_PATH ?= $(HOME)/.hsmca
export HSMCA_PATH
APT_PACKAGES := softhsm2 opensc openssl p11-kit p11-kit-modules lego curl iproute2 packer shellcheck nftables systemd \
	openssh-client openssh-server
PYTEST_ARGS ?=

.PHONY: run test bench lint deps venv node-deps clean image-deps image image-check image-repro image-boot

## Install the system packages (root only; others must have them already).
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing packages:$$missing (run make as root, or install them)"; exit 1; fi; \
	  echo "installing$$missing"; \
	  apt-get -o DPkg::Lock::Timeout=600 update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq $$missing; \
	fi

$(BIN)/hsmca: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

venv: $(BIN)/hsmca

## A dev CA on its embedded defaults (SoftHSM token + SQLite) under $(HSMCA_PATH), served on :9000.
run: deps venv
	@if [ ! -f "$(HSMCA_PATH)/config/ca.json" ]; then \
	  mkdir -p "$(HSMCA_PATH)/secrets" && chmod 700 "$(HSMCA_PATH)/secrets"; \
	  pw="$(HSMCA_PATH)/secrets/provisioner_password"; \
	  [ -f "$$pw" ] || (umask 077; $(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(24))' > "$$pw"); \
	  $(BIN)/hsmca init --name "hsmca dev" --provisioner admin --password-file "$$pw"; \
	  echo "provisioner 'admin' password: $$pw"; \
	fi
	@if [ "$$(id -u)" = 0 ] && { [ ! -e /usr/local/bin/hsmca ] || [ -L /usr/local/bin/hsmca ]; }; then \
	  ln -sfn "$(CURDIR)/$(BIN)/hsmca" /usr/local/bin/hsmca; fi
	$(BIN)/hsmca serve

## The OpenID provider the OIDC tests sign in at (node's oidc-provider, pinned by tests/oidc_provider/package-lock.json).
## Node.js comes from apt when it is missing (Debian's 18 will do); an installed node (with its npm) is used as is.
OIDC_PROVIDER := tests/oidc_provider
$(OIDC_PROVIDER)/node_modules/.package-lock.json: $(OIDC_PROVIDER)/package-lock.json
	@if ! command -v npm >/dev/null; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing: node and npm (run make as root, or install them)"; exit 1; fi; \
	  apt-get -o DPkg::Lock::Timeout=600 update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq nodejs npm; \
	fi
	npm ci --prefix $(OIDC_PROVIDER) --no-audit --no-fund --loglevel=error
	touch $@

node-deps: $(OIDC_PROVIDER)/node_modules/.package-lock.json

## The whole test suite: real SoftHSM, real databases where reachable, real server processes.
test: deps venv node-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

## Benchmarks (never part of `make test`): issuance via ../shared/bench/loadsign.py at c=1 and c=8, the HTTPS
## floor, peak RSS, raw SoftHSM signatures/s. BENCH_ARGS='--sustained 600' adds ten minutes with housekeeping.
bench: deps venv
	$(BIN)/python bench/issue.py $(BENCH_ARGS)

## The appliance image (root): packer/README.md. `make image` builds build/image/image/: the system disk
## hsmca.qcow2, the empty data disk hsmca-data.qcow2, the manifests and SHA256SUMS signed through kms/ (SIGN_KEY, a
## key URI; else a SoftHSM development key). `make image-check` runs the offline checks on it; `make image-repro`
## builds it a second time from the same inputs into build/image-b and compares the manifests; `make image-boot`
## boots the first, upgrades to the second keeping the data disk, and rolls back.
IMAGE_BUILD ?= build/image
SECOND_BUILD ?= $(IMAGE_BUILD)-b
ifndef BUILD_ID
BUILD_ID := $(shell git rev-parse --short HEAD 2>/dev/null || echo local)-$(shell date -u +%Y%m%dT%H%M%SZ)
endif
IMAGE_APT_PACKAGES := packer mmdebstrap qemu-system-x86 qemu-utils ovmf mtools dosfstools fdisk e2fsprogs \
	systemd-boot-efi openssh-client shellcheck nftables curl softhsm2 openssl

image-deps:
	@missing=""; for p in $(IMAGE_APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  apt-get -o DPkg::Lock::Timeout=600 update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $$missing; \
	fi

image: image-deps venv
	PYTHON=$(abspath $(BIN)/python) bash packer/scripts/wheelhouse.sh $(IMAGE_BUILD)/wheelhouse
	BUILD_ID=$(BUILD_ID) bash packer/scripts/disk.sh $(IMAGE_BUILD)
	rm -rf $(IMAGE_BUILD)/image
	cd packer && PACKER_CACHE_DIR=$(abspath $(IMAGE_BUILD))/packer_cache packer build -var base_disk=$(abspath $(IMAGE_BUILD))/base.qcow2 \
	  -var base_disk_checksum=file:$(abspath $(IMAGE_BUILD))/base.qcow2.sha256 \
	  -var wheelhouse=$(abspath $(IMAGE_BUILD))/wheelhouse -var output_directory=$(abspath $(IMAGE_BUILD))/image \
	  -var ssh_private_key_file=$(abspath $(IMAGE_BUILD))/build_key hsmca.pkr.hcl
	HSMCA=$(abspath $(BIN)/hsmca) PYTHON=$(abspath $(BIN)/python) DEV_SIGNING_DIR=build/signing \
	  bash packer/scripts/release.sh $(IMAGE_BUILD)

image-check: image-deps
	bash packer/scripts/check.sh $(IMAGE_BUILD)/image/hsmca.qcow2

image-repro: image-deps venv
	@first=$$(sed -n 's/^HSMCA_SOURCE=//p' $(IMAGE_BUILD)/image/hsmca-release 2>/dev/null); \
	if [ "$$first" != "$$(git rev-parse HEAD)" ] || [ -n "$$(git status --porcelain --untracked-files=no)" ]; then \
	  echo "image-repro rebuilds the first image's inputs: it needs $(IMAGE_BUILD) built from this commit" \
	       "($$(git rev-parse --short HEAD)) with a clean tree; the first was built from $${first:-nothing}"; exit 1; fi
	$(MAKE) image IMAGE_BUILD=$(SECOND_BUILD) BUILD_ID=$(BUILD_ID)-b
	diff -u $(IMAGE_BUILD)/image/packages.txt $(SECOND_BUILD)/image/packages.txt
	diff -u $(IMAGE_BUILD)/image/wheels.txt $(SECOND_BUILD)/image/wheels.txt
	@echo "reproducible: the two builds have the same $$(wc -l < $(SECOND_BUILD)/image/packages.txt) packages and $$(wc -l < $(SECOND_BUILD)/image/wheels.txt) wheels"

image-boot: image-deps venv
	HSMCA=$(abspath $(BIN)/hsmca) bash packer/scripts/boot.sh $(IMAGE_BUILD)/image $(SECOND_BUILD)/image

lint: venv
	$(BIN)/python -m pip install -q ruff mypy
	$(BIN)/ruff check appliance kms policy ceremony softhsm tests bench
	$(BIN)/mypy appliance kms policy softhsm ceremony

clean:
	rm -rf $(VENV) build *.egg-info
