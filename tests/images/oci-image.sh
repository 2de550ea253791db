#!/usr/bin/env bash
# Builds an OCI image archive (for `ctr image import` or `skopeo copy
# oci-archive:...`) offline: a busybox layer from Debian's busybox-static
# (busybox with every applet linked, /etc/passwd and /etc/group of a minimal
# image), and, when files are added, a second layer with them. No registry
# needed. Every image of the tests (busybox, the pause image, critest's test
# images) is built here.
#
# usage: tests/images/oci-image.sh [OPTIONS] OUT.tar IMAGE_NAME
#   --bare               no busybox layer: only the added files (the pause image)
#   --add SRC:PATH[:MODE] put file SRC at PATH in the image (MODE octal, e.g. 4755)
#   --host-tool SRC[:PATH] put the machine's program SRC at PATH (default: SRC),
#                        with the shared libraries and loader it links (ldd):
#                        tools busybox-static lacks (util-linux's ipcs, procps'
#                        pgrep) and a /bin/sh that execs (fetch-busybox-shell)
#   --text PATH=TEXT     put a file with TEXT at PATH
#   --user USER          the image config's User
#   --entrypoint JSON    the config's Entrypoint (a JSON array)
#   --cmd JSON           the config's Cmd (JSON array; default ["sh"], none if --bare)
#   --passwd LINE        one more /etc/passwd line (repeatable); --group LINE likewise
#   --layer-cache DIR    keep the busybox layer in DIR and reuse it from there
#                        (linking 400 applets is slow under emulation)
set -euo pipefail

usage() { sed -n '9,23s/^# \{0,1\}//p' "$0" >&2; exit 2; }

bare=false user= entrypoint= cmd= cache=
adds=() texts=() passwd=() group=() tools=()
while [ $# -gt 0 ]; do
  case "$1" in
    --bare) bare=true; shift ;;
    --add) adds+=("${2:?}"); shift 2 ;;
    --text) texts+=("${2:?}"); shift 2 ;;
    --host-tool) tools+=("${2:?}"); shift 2 ;;
    --user) user=${2:?}; shift 2 ;;
    --entrypoint) entrypoint=${2:?}; shift 2 ;;
    --cmd) cmd=${2:?}; shift 2 ;;
    --passwd) passwd+=("${2:?}"); shift 2 ;;
    --group) group+=("${2:?}"); shift 2 ;;
    --layer-cache) cache=${2:?}; shift 2 ;;
    -h|--help) usage ;;
    -*) usage ;;
    *) break ;;
  esac
done
[ $# -eq 2 ] || usage
out=$1
name=$2

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
layout=$work/layout
mkdir -p "$layout/blobs/sha256"
blob() { # FILE -> prints digest, stores the blob
  local digest
  digest=$(sha256sum "$1" | cut -d' ' -f1)
  cp "$1" "$layout/blobs/sha256/$digest"
  echo "$digest"
}
size() { stat -c %s "$1"; }
pack() { # ROOT NAME -> NAME.tar.gz and NAME.diff_id in $work
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$1" -cf "$work/$2.tar" .
  sha256sum "$work/$2.tar" | cut -d' ' -f1 >"$work/$2.diff_id"
  gzip -n -c "$work/$2.tar" >"$work/$2.tar.gz"
}

busybox_layer() { # -> busybox.tar.gz and busybox.diff_id in $work
  if [ -n "$cache" ] && [ -f "$cache/busybox.diff_id" ]; then
    cp "$cache/busybox.tar.gz" "$cache/busybox.diff_id" "$work/"
    return
  fi
  local root=$work/busybox-root
  mkdir -p "$root"/{bin,etc,proc,sys,dev,tmp,root,home/user}
  chmod 1777 "$root/tmp"
  cp /bin/busybox "$root/bin/busybox"
  # Hard links, as busybox's own images have: a symlink would make a mount
  # on an applet's path (critest masks /bin/ls with /dev/null) land on
  # busybox itself, and with it every applet.
  for applet in $(/bin/busybox --list); do
    [ -e "$root/bin/$applet" ] || ln "$root/bin/busybox" "$root/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  pack "$root" busybox
  if [ -n "$cache" ]; then
    mkdir -p "$cache"
    cp "$work/busybox.tar.gz" "$cache/busybox.tar.gz.tmp"
    mv "$cache/busybox.tar.gz.tmp" "$cache/busybox.tar.gz"
    cp "$work/busybox.diff_id" "$cache/busybox.diff_id"   # last: marks the cache complete
  fi
}

layers=()   # "digest diff_id size" per layer, bottom first
add_layer() { # NAME
  local digest
  digest=$(blob "$work/$1.tar.gz")
  layers+=("$digest $(cat "$work/$1.diff_id") $(size "$work/$1.tar.gz")")
}

if ! $bare; then
  busybox_layer
  add_layer busybox
fi

# The second layer: added files, and /etc/passwd and /etc/group when extended.
extra=$work/extra-root
mkdir -p "$extra"
for spec in "${adds[@]}"; do
  IFS=: read -r src path mode <<<"$spec"
  mkdir -p "$extra/$(dirname "$path")"
  cp "$src" "$extra/$path"
  chmod "${mode:-0755}" "$extra/$path"
done
for spec in "${tools[@]}"; do
  IFS=: read -r tool path <<<"$spec"
  [ -x "$tool" ] || { echo "oci-image.sh: no program $tool on this machine" >&2; exit 2; }
  path=${path:-$tool}
  mkdir -p "$extra/$(dirname "$path")"
  cp -L "$tool" "$extra/$path"
  for lib in $(ldd "$tool" | sed -n 's/.*=> \(\/[^ ]*\) .*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) .*/\1/p'); do
    mkdir -p "$extra/$(dirname "$lib")"
    cp -L "$lib" "$extra/$lib"
  done
done
for spec in "${texts[@]}"; do
  path=${spec%%=*}
  mkdir -p "$extra/$(dirname "$path")"
  printf '%s\n' "${spec#*=}" >"$extra/$path"
done
if [ ${#passwd[@]} -gt 0 ] || [ ${#group[@]} -gt 0 ]; then
  $bare && { echo "oci-image.sh: --passwd/--group need the busybox layer" >&2; exit 2; }
  mkdir -p "$extra/etc"
  tar -xzf "$work/busybox.tar.gz" -C "$extra" ./etc/passwd ./etc/group
  for line in "${passwd[@]}"; do echo "$line" >>"$extra/etc/passwd"; done
  for line in "${group[@]}"; do echo "$line" >>"$extra/etc/group"; done
fi
if [ -n "$(ls -A "$extra")" ]; then
  pack "$extra" extra
  add_layer extra
fi
[ ${#layers[@]} -gt 0 ] || { echo "oci-image.sh: an image with no layer" >&2; exit 2; }

if [ -z "$cmd" ] && ! $bare && [ -z "$entrypoint" ]; then cmd='["sh"]'; fi
config_extra=
[ -n "$user" ] && config_extra+=",\"User\":\"$user\""
[ -n "$entrypoint" ] && config_extra+=",\"Entrypoint\":$entrypoint"
[ -n "$cmd" ] && config_extra+=",\"Cmd\":$cmd"
diff_ids= manifest_layers= sep=
for layer in "${layers[@]}"; do
  read -r digest diff_id bytes <<<"$layer"
  diff_ids+="$sep\"sha256:$diff_id\""
  manifest_layers+="$sep{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$digest\",\"size\":$bytes}"
  sep=,
done

cat >"$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"WorkingDir":"/"$config_extra},"rootfs":{"type":"layers","diff_ids":[$diff_ids]},"history":[{"created_by":"tests/images/oci-image.sh"}]}
JSON
config=$(blob "$work/config.json")

cat >"$work/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config","size":$(size "$work/config.json")},"layers":[$manifest_layers]}
JSON
manifest=$(blob "$work/manifest.json")

cat >"$layout/index.json" <<JSON
{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest","size":$(size "$work/manifest.json"),"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"$name","org.opencontainers.image.ref.name":"latest"}}]}
JSON
echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$layout" -cf "$out" .
