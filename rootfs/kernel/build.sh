#!/usr/bin/env bash
# Builds the guest kernel from Debian's linux-source tarball, with our patches
# applied: tinyconfig plus our fragments, no modules. Results are cached
# outside the tree under a hash of (source package version, fragments,
# patches, this script), so an unchanged kernel is never rebuilt on the same
# machine.
#
# usage: rootfs/kernel/build.sh [--config-only] OUT_DIR
#   writes OUT_DIR/vmlinux, OUT_DIR/bzImage and OUT_DIR/kernel.config
#   --config-only: take the cache-miss path (extract, patch, configure, check
#   the options) without the cache lookup and the compile, and write only
#   OUT_DIR/kernel.config; nothing is cached. `make cold-check` runs it
#   against an empty cache so CI sees a script that assumes a warm machine.
set -euo pipefail

config_only=false
if [ "${1:-}" = --config-only ]; then config_only=true; shift; fi
out_dir=${1:?usage: build.sh [--config-only] OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
source_package=linux-source-6.1
tarball=/usr/src/linux-source-6.1.tar.xz
cache_root=${COCOON_CACHE_DIR:-/var/cache/cocoon}/kernel

die() { echo "kernel build: $*" >&2; exit 1; }

[ -f "$tarball" ] || die "$tarball is missing: run 'make deps' (Debian package $source_package)"
source_version=$(dpkg-query -W -f='${Version}' "$source_package") \
  || die "Debian package $source_package is not installed: run 'make deps'"

fragments=("$here"/fragments/*.config)
patches=("$here"/patches/*.patch)
key=$( { echo "$source_version"; cat "${fragments[@]}" "${patches[@]}" "$0"; } | sha256sum | cut -c1-16)
patch_key=$( { echo "$source_version"; cat "${patches[@]}"; } | sha256sum | cut -c1-16)
cached="$cache_root/$key"
mkdir -p "$cache_root"

if $config_only || [ ! -f "$cached/vmlinux" ]; then
  echo "kernel build: building $source_package $source_version (cache key $key)"
  started=$(date +%s)
  # One extracted tree per set of patches; an older set's tree goes.
  src="$cache_root/src-$source_version-$patch_key"
  if [ ! -f "$src/.extracted" ]; then
    find "$cache_root" -maxdepth 1 -name 'src-*' ! -path "$src" -exec rm -rf {} +
    rm -rf "$src" && mkdir -p "$src"
    tar -xf "$tarball" -C "$src" --strip-components=1
    for p in "${patches[@]}"; do
      patch -d "$src" -p1 --quiet <"$p" || die "patch $(basename "$p") does not apply to $source_package $source_version"
    done
    touch "$src/.extracted"
  fi
  obj="$cache_root/obj-$key"
  rm -rf "$obj" && mkdir -p "$obj"
  kmake() { make -C "$src" O="$obj" ARCH=x86_64 -s "$@"; }
  kmake tinyconfig >/dev/null
  "$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "${fragments[@]}" >/dev/null
  kmake olddefconfig >/dev/null

  # Every option a fragment asks for must have survived olddefconfig; a
  # silently dropped option (missing dependency) would otherwise surface much
  # later as a mysterious guest failure.
  missing=0
  while IFS= read -r line; do
    case "$line" in
      CONFIG_*=*) grep -qxF "$line" "$obj/.config" || { echo "  wanted '$line', got '$(grep -E "^(# )?${line%%=*}[= ]" "$obj/.config" || echo unset)'" >&2; missing=1; } ;;
      "# CONFIG_"*" is not set") name=${line#\# }; name=${name%% *}
        ! grep -q "^$name=" "$obj/.config" || { echo "  wanted '$line', got '$(grep "^$name=" "$obj/.config")'" >&2; missing=1; } ;;
    esac
  done < <(cat "${fragments[@]}")
  [ "$missing" = 0 ] || die "options requested by rootfs/kernel/fragments did not survive olddefconfig (see above)"
  if $config_only; then
    mkdir -p "$out_dir"
    cp "$obj/.config" "$out_dir/kernel.config"
    rm -rf "$obj"
    echo "kernel build: configured in $(( $(date +%s) - started )) s (--config-only: not compiled, not cached)"
    exit 0
  fi

  kmake -j"$(nproc)" vmlinux bzImage
  staging="$cache_root/.staging-$key"
  rm -rf "$staging" && mkdir -p "$staging"
  cp "$obj/vmlinux" "$obj/arch/x86/boot/bzImage" "$staging/"
  cp "$obj/.config" "$staging/kernel.config"
  rm -rf "$cached" && mv "$staging" "$cached"
  rm -rf "$obj"
  echo "kernel build: done in $(( $(date +%s) - started )) s"
else
  echo "kernel build: cached $source_package $source_version ($cached)"
fi

mkdir -p "$out_dir"
for f in vmlinux bzImage kernel.config; do
  cmp -s "$cached/$f" "$out_dir/$f" || cp "$cached/$f" "$out_dir/$f"
done
