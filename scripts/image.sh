#!/usr/bin/env bash
# Builds the locust-xmpp image with podman where no container registry is reachable, and the lab Prosody's image
# that the container test (tests/containers) plays beside it:
#
#   localhost/locust-xmpp-base:bookworm   Debian 12 (debootstrap --variant=minbase, the mirror apt already uses) with
#                                         python3, python3-venv and ca-certificates: the base of both
#   localhost/locust-xmpp:VERSION         the Dockerfile on that base (BASE build argument); the manifests' image
#   localhost/locust-xmpp-prosody:0.12    k8s/prosody/Dockerfile on that base: Debian's Prosody
#
#   bash scripts/image.sh             # build what is missing or out of date
#   bash scripts/image.sh --rebuild   # build both images again (new releases from PyPI and Debian), not the base
#
# What is built is reused: a base image present is not built again (podman rmi it to have a new one); an image is
# built again only when its inputs changed. Its inputs are its Dockerfile, the files of its build context (for
# locust-xmpp what .dockerignore lets in: pyproject.toml, README.md, xmpp_user/, locustfiles/; byte code aside)
# and the base image's id: their sha256 is the image's label org.locust-xmpp.inputs, compared before building.
# Packages from PyPI and Debian are not inputs: --rebuild takes their new releases.
#
# podman's settings for this machine come from k8s/podman/containers.conf (CONTAINERS_CONF), not from /etc.
# Needs root (debootstrap, rootful podman): bash scripts/setup.sh installs podman and debootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."
export CONTAINERS_CONF="$PWD/k8s/podman/containers.conf"

rebuild=false
case "${1:-}" in
    "") ;;
    --rebuild) rebuild=true ;;
    *) echo "usage: bash scripts/image.sh [--rebuild]" >&2; exit 2 ;;
esac
for command in podman debootstrap; do
    command -v "$command" >/dev/null || { echo "image: $command is missing: run  bash scripts/setup.sh" >&2; exit 1; }
done

SUITE=bookworm
BASE=localhost/locust-xmpp-base:$SUITE
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
IMAGE=localhost/locust-xmpp:$version
PROSODY=localhost/locust-xmpp-prosody:0.12
LABEL=org.locust-xmpp.inputs
start=$SECONDS

say() { echo "image: $*"; }

# The Debian mirror apt already uses (deb822 sources, else the one-line format), else Debian's own.
mirror() {
    local url=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        url=$(awk '/^URIs:/ { uri = $2 } /^Suites:/ && / '"$SUITE"'( |$)/ { print uri; exit }' \
            /etc/apt/sources.list.d/debian.sources)
    fi
    if [ -z "$url" ] && [ -f /etc/apt/sources.list ]; then
        url=$(awk '$1 == "deb" && $3 == "'"$SUITE"'" { print $2; exit }' /etc/apt/sources.list)
    fi
    echo "${url:-http://deb.debian.org/debian}"
}

build_base() {
    if podman image exists "$BASE"; then
        say "$BASE is there: reused"
        return
    fi
    local rootfs url
    rootfs=$(mktemp -d /var/tmp/locust-xmpp-base.XXXXXX)
    # shellcheck disable=SC2064  # the path is fixed now
    trap "rm -rf '$rootfs'" EXIT
    url=$(mirror)
    say "building $BASE: debootstrap --variant=minbase $SUITE from $url"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" "$rootfs" "$url" \
        >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
    rm -f "$rootfs.log"
    # What only debootstrap and apt's downloads left: package lists, archives, logs.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
        "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs"/debootstrap
    tar --numeric-owner -C "$rootfs" -c . | podman import -q \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
}

# sha256 of an image's inputs: its Dockerfile, the files given, the base image's id.
inputs() {
    local dockerfile=$1
    shift
    {
        podman image inspect --format '{{.Id}}' "$BASE"
        sha256sum "$dockerfile"
        if (($#)); then
            find "$@" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
        fi
    } | sha256sum | cut -c1-64
}

# build IMAGE DOCKERFILE CONTEXT INPUTS PODMAN_BUILD_ARGS...
build() {
    local image=$1 dockerfile=$2 context=$3 digest=$4
    shift 4
    if ! $rebuild && [ "$(podman image inspect --format "{{index .Labels \"$LABEL\"}}" "$image" 2>/dev/null)" = "$digest" ]; then
        say "$image is up to date: reused"
        return
    fi
    say "building $image"
    podman build -q --layers=false --build-arg "BASE=$BASE" --label "$LABEL=$digest" -f "$dockerfile" -t "$image" \
        "$@" "$context" >/dev/null
    podman image prune -f >/dev/null  # the image it replaced, and the build stage
}

build_base
# pip in the build reaches PyPI with the host's CA bundle, mounted for the build only (this machine's way to PyPI
# needs it); nothing of it is in the image.
ca=()
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    ca=(-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro
        --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
fi
build "$IMAGE" Dockerfile . "$(inputs Dockerfile .dockerignore pyproject.toml README.md xmpp_user locustfiles)" \
    "${ca[@]}"
build "$PROSODY" k8s/prosody/Dockerfile k8s/prosody "$(inputs k8s/prosody/Dockerfile)"
say "$IMAGE, $PROSODY ready after $((SECONDS - start)) s"
