# Cocoon: `make deps`, `make` (build everything), `make test`, `make demo`.
SHELL := /bin/bash
.DEFAULT_GOAL := all

CARGO ?= cargo
# Every release binary is linked statically, and not position-independent:
# the agent is PID 1 of a guest with nothing else in it, and a static non-PIE
# cocoon-vmm starts in a fraction of the time (no loader, no relocations; in
# the emulated host VM 9 ms instead of 55 ms for a hello world). Naming the
# target keeps these RUSTFLAGS off build scripts and proc macros.
TARGET := x86_64-unknown-linux-gnu
RELEASE := target/$(TARGET)/release
STATIC_RUSTFLAGS := -C target-feature=+crt-static -C relocation-model=static
GUEST := build/guest

# Every Debian package the build, the tests and the demo use.
DEBIAN_PACKAGES := \
	build-essential patch pkg-config bc bison flex libelf-dev libssl-dev xz-utils kmod cpio file \
	linux-source-6.1 busybox-static e2fsprogs xfsprogs iproute2 procps gzip libseccomp-dev \
	qemu-system-x86 containerd runc \
	docker-registry skopeo containernetworking-plugins iptables openssl

.PHONY: all deps build kernel initramfs guest test lint unit-test cold-check kvm-test conformance bench demo install clean fuzz fuzz-smoke

all: build guest

## deps: install the Debian packages above (only those missing), crictl and critest
## (cri-tools), containerd 1.7 and 2.x, nerdctl, Kubernetes and etcd (pinned, built with Go into the cache), the dynamically linked busybox of the
## critest image (unpacked into the cache) and the KVM host VM's kernel.
deps:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do \
	    dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    echo "deps: installing" $$missing; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt
	tests/tools/build-go-tools >/dev/null
	tests/tools/fetch-busybox-shell >/dev/null
	tests/kvm-host --prepare

# The shim, cocoon-vmm, the agent, and the test tools (cocoon-guest-probe runs
# in test guests; cocoon-bench is `make bench`), all into $(RELEASE).
build:
	RUSTFLAGS='$(STATIC_RUSTFLAGS)' $(CARGO) build --release --target $(TARGET) --workspace

kernel:
	rootfs/kernel/build.sh $(GUEST)

initramfs: build
	rootfs/build-initramfs.sh $(RELEASE)/cocoon-agent $(GUEST)/initramfs.img

guest: kernel initramfs

## test: everything CI checks. Tests that need KVM run in one host VM (tests/kvm-host);
## the README's `make demo` runs as a user runs it; the build scripts' cache-miss
## paths run against an empty cache; every fuzz target gets a short run (its
## seeds include past crashes).
test: deps all lint unit-test cold-check kvm-test demo fuzz-smoke

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit-test:
	$(CARGO) test --workspace

# The build and preparation scripts on a new machine's empty cache (no compile).
cold-check: build
	tests/cold-check $(RELEASE)/cocoon-agent

# Test binaries are built here and run inside host VMs: cargo itself would
# crawl under emulation. Their KVM tests are #[ignore]d in unit-test, with the
# reason, and run here with --ignored, in two host VMs at once (one per core:
# tests/run-kvm-tests). (Test executables live in deps/; the binaries that
# integration tests use do not take test arguments.)
kvm-test: guest
	@bins=$$($(CARGO) test --workspace --no-run --message-format=json \
	    | sed -n 's/.*"executable":"\([^"]*\/deps\/[^"]*\)".*/\1/p'); \
	[ -n "$$bins" ] || { echo "kvm-test: no test binaries found" >&2; exit 1; }; \
	tests/run-kvm-tests --timeout 4200 $$bins

## conformance: critest's whole suite (minus tests/cri/critest-skip.txt) with the
## cocoon handler (on containerd 1.6 and 2.x), and with runc side by side; the
## containerd 2.x scenarios (ctr, CRI, nerdctl) kvm-test leaves out, and the containerd 1.7 ones
## (all but its crictl pod: ctr scenarios, critest subset); too slow under emulation for
## every CI run, where kvm-test runs a subset (docs/testing.md).
conformance: guest
	@bins=$$($(CARGO) test -p cocoon-tests --test cri --test containerd --test nerdctl --no-run --message-format=json \
	    | sed -n 's/.*"executable":"\([^"]*\/deps\/\(cri\|containerd\|nerdctl\)-[^"]*\)".*/\1/p'); \
	[ $$(echo $$bins | wc -w) -eq 3 ] || { echo "conformance: no cri, containerd and nerdctl test binaries" >&2; exit 1; }; \
	tests/kvm-host --timeout 14400 -- tests/run-tests --ignored --test-threads=1 --nocapture conformance_ -- $$bins

## bench: speed and memory as ratios against QEMU and runc (`ctr run` and CRI pods), measured
## side by side; ends with a summary table (tests/src/bin/cocoon-bench/). The host VM has a disk,
## as a node does, for the container root file systems' workload.
bench: all
	tests/kvm-host --timeout 1800 --disk 8 -- $(RELEASE)/cocoon-bench --vmm $(RELEASE)/cocoon-vmm

## demo: a private containerd runs `uname -a` in a Cocoon microVM (busybox image built offline).
demo: deps all
	tests/kvm-host -- tests/demo

## install: the shim and VMM into $(PREFIX)/bin, the guest into $(PREFIX)/share/cocoon.
PREFIX ?= /usr/local
install: all
	install -D -m 0755 $(RELEASE)/containerd-shim-cocoon-v1 $(PREFIX)/bin/containerd-shim-cocoon-v1
	install -D -m 0755 $(RELEASE)/cocoon-vmm $(PREFIX)/bin/cocoon-vmm
	install -D -m 0644 $(GUEST)/vmlinux $(PREFIX)/share/cocoon/vmlinux
	install -D -m 0644 $(GUEST)/initramfs.img $(PREFIX)/share/cocoon/initramfs.img
	@echo
	@echo "Installed. Without /etc/cocoon/config.toml the shim uses $(PREFIX)/share/cocoon"
	@echo "(kernel, initramfs) and $(PREFIX)/bin/cocoon-vmm; see docs/architecture.md for every key."
	@echo "Try it:  ctr run --rm --runtime io.containerd.cocoon.v1 docker.io/library/busybox:latest demo uname -a"
	install -D -m 0644 deploy/kubernetes/runtimeclass.yaml $(PREFIX)/share/cocoon/runtimeclass.yaml
	install -D -m 0644 deploy/kubernetes/containerd-cri.toml $(PREFIX)/share/cocoon/containerd-cri.toml
	install -D -m 0644 deploy/kubernetes/containerd2-cri.toml $(PREFIX)/share/cocoon/containerd2-cri.toml
	@# The snippet follows the config file's format: `version = 3` (containerd 2.x)
	@# renamed the CRI plugins; 2.x still reads a `version = 2` file. No file yet:
	@# the installed containerd's major version decides.
	@conf=/etc/containerd/config.toml; snippet=containerd-cri.toml; \
	if [ -f $$conf ]; then grep -Eq '^version *= *3' $$conf && snippet=containerd2-cri.toml; \
	else containerd --version 2>/dev/null | grep -Eq ' v?2\.' && snippet=containerd2-cri.toml; fi; \
	echo "For Kubernetes (docs/kubernetes.md), add to $$conf and restart containerd"; \
	echo "(this is $(PREFIX)/share/cocoon/$$snippet; containerd-cri.toml is for config version 2,"; \
	echo "containerd 1.6/1.7; containerd2-cri.toml for version 3, containerd 2.x):"; \
	sed 's/^/  /' deploy/kubernetes/$$snippet
	@echo "then: kubectl apply -f $(PREFIX)/share/cocoon/runtimeclass.yaml  (RuntimeClass cocoon, handler: cocoon)"

clean:
	$(CARGO) clean
	rm -rf build

## fuzz: run every fuzz target (fuzz/, cargo-fuzz) for FUZZ_SECONDS each; a crash or hang fails.
# The targets are the [[bin]]s of fuzz/Cargo.toml (`cargo fuzz list`); see
# docs/testing.md for what each covers.
# Stable Rust: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags (AddressSanitizer).
# Seeds are committed in fuzz/seeds/; fuzz/corpus/ (what the fuzzer adds) and
# fuzz/artifacts/ (crashing inputs) are not.
FUZZ_SECONDS ?= 30
CARGO_FUZZ_VERSION := 0.13.2
CARGO_FUZZ := RUSTC_BOOTSTRAP=1 $(CARGO) fuzz
# Sanitizer builds of libcontainer and friends take ~10 min from scratch:
# keep them outside the checkout so every clone on this machine reuses them
# (cargo rebuilds whatever changed).
FUZZ_TARGET_DIR ?= $(or $(COCOON_CACHE_DIR),/var/cache/cocoon)/fuzz-target

fuzz-smoke:
	$(MAKE) fuzz FUZZ_SECONDS=10

fuzz:
	@$(CARGO) fuzz --version 2>/dev/null | grep -qx 'cargo-fuzz $(CARGO_FUZZ_VERSION)' \
	    || $(CARGO) install --locked cargo-fuzz@$(CARGO_FUZZ_VERSION)
	$(CARGO_FUZZ) build --target-dir $(FUZZ_TARGET_DIR)
	@targets=$$($(CARGO) fuzz list) && [ -n "$$targets" ] || { echo "fuzz: no fuzz targets" >&2; exit 1; }; \
	for t in $$targets; do \
	    mkdir -p fuzz/corpus/$$t; \
	    if [ -d fuzz/seeds/$$t ]; then cp fuzz/seeds/$$t/* fuzz/corpus/$$t/; fi; \
	    echo "fuzz: $$t for $(FUZZ_SECONDS) s"; \
	    $(CARGO_FUZZ) run --target-dir $(FUZZ_TARGET_DIR) $$t -- -max_total_time=$(FUZZ_SECONDS) -timeout=10 -print_final_stats=1 \
	        || { echo "fuzz: $$t failed; the input is in fuzz/artifacts/$$t/" >&2; exit 1; }; \
	done
