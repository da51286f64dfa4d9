#!/usr/bin/env bash
# Builds the images meridian/global-cp, meridian/zone-cp, meridian/zone-proxy and meridian/demo-app
# (plus meridian/meshctl, and meridian/fault-relay for the chaos tests' container tier: TCP relays
# with fault injection on a control port) from this repository alone: nothing is pulled (FROM scratch). Reuses the
# cargo build (release by default: PROFILE=debug to use the debug one), builds only what is
# missing, and prints each image's size.
#
#   deploy/build-images.sh            # cargo build --release of the six binaries, then images
#   PROFILE=debug TAG=dev deploy/build-images.sh
#   SKIP_CARGO=1 deploy/build-images.sh   # use the binaries as they are
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
profile=${PROFILE:-release}
tag=${TAG:-latest}
target=${CARGO_TARGET_DIR:-$repo/target}
bins=(global-cp zone-cp zone-proxy demo-app meshctl fault-relay)

if [[ -z "${SKIP_CARGO:-}" ]]; then
    flag=()
    [[ "$profile" == release ]] && flag=(--release)
    (cd "$repo" && cargo build "${flag[@]}" -p global-cp -p zone-cp -p zone-proxies -p demo-app \
        -p meshctl --bins)
    (cd "$repo" && cargo build "${flag[@]}" -p test-support --bin fault-relay)
fi

stage=$(mktemp -d "${TMPDIR:-/tmp}/meridian-images.XXXXXX")
trap 'rm -rf "$stage"' EXIT

# The probe: one small std-only program, the health check of every image.
rustc --edition 2021 -C opt-level=s -C strip=symbols -C panic=abort \
    -o "$stage/probe" "$here/docker/probe.rs"

# Copies a dynamically linked file and exactly the libraries ldd lists for it into a rootfs.
copy_with_libs() {
    local file=$1 root=$2 lib
    for lib in $(ldd "$file" | grep -o '/[^ ]*'); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
}

# The health check of each image when run with its default ports.
health_url() {
    case $1 in
        global-cp | zone-cp) echo "http://127.0.0.1:5680/ready" ;;
        zone-proxy) echo "http://127.0.0.1:9901/ready" ;;
        fault-relay) echo "http://127.0.0.1:9900/ready" ;;
        demo-app) echo "http://127.0.0.1:8080/health" ;;
        meshctl) echo "" ;;
    esac
}

for bin in "${bins[@]}"; do
    src="$target/$profile/$bin"
    [[ -x "$src" ]] || { echo "build-images: $src is missing (cargo build first)" >&2; exit 1; }
    ctx="$stage/$bin"
    root="$ctx/rootfs"
    mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp" "$ctx/state"
    chmod 1777 "$root/tmp"
    cp "$src" "$root/usr/local/bin/$bin"
    strip "$root/usr/local/bin/$bin" 2>/dev/null || true
    cp "$stage/probe" "$root/usr/local/bin/probe"
    copy_with_libs "$root/usr/local/bin/$bin" "$root"
    copy_with_libs "$stage/probe" "$root"
    printf 'root:x:0:0:root:/:/sbin/nologin\nmeridian:x:10001:10001:meridian:/var/lib/meridian:/sbin/nologin\n' \
        >"$root/etc/passwd"
    printf 'root:x:0:\nmeridian:x:10001:\n' >"$root/etc/group"
    url=$(health_url "$bin")
    sed -e "s|@BIN@|$bin|g" -e "s|@HEALTH_URL@|$url|g" "$here/docker/Dockerfile.in" >"$ctx/Dockerfile"
    if [[ -z "$url" ]]; then
        # meshctl is a client, run to completion: nothing to check.
        sed -i -e 's|^HEALTHCHECK .*|HEALTHCHECK NONE|' "$ctx/Dockerfile"
    fi
    docker build -q -t "meridian/$bin:$tag" "$ctx" >/dev/null
done

printf '%-28s %s\n' IMAGE SIZE
for bin in "${bins[@]}"; do
    size=$(docker image inspect -f '{{.Size}}' "meridian/$bin:$tag")
    printf '%-28s %s MB\n' "meridian/$bin:$tag" "$(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1e6 }')"
done
