#!/usr/bin/env bash
# Builds the CPU image from ./Dockerfile with podman, for machines with no Docker engine (tests/test_container.py
# runs what this builds). With Docker: `docker build -t local-llm-api:cpu .` does the same.
#
#   IMAGE      the tag to build (local-llm-api:cpu)
#   EXTRAS     backends in the image (llama-cpp,transformers; llama-cpp alone leaves torch out)
#   TORCH_INDEX  where torch's CPU build comes from (download.pytorch.org; any index where it cannot be reached)
#   CA_BUNDLE  a CA bundle pip inside the build must trust (a TLS-intercepting proxy's), mounted for the build only
#
# Where Docker Hub cannot be reached, debian:bookworm-slim is made locally with mmdebstrap (Debian's own packages).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-local-llm-api:cpu}
BASE=docker.io/library/debian:bookworm-slim
# runc and cgroupfs: podman's default crun fails on hybrid cgroup layouts; the default ulimits can exceed a sandbox's.
PODMAN=(podman --runtime runc --cgroup-manager cgroupfs)
LIMITS=(--ulimit nofile=20000:20000 --ulimit nproc=4096:4096)

if ! "${PODMAN[@]}" image exists "$BASE" && ! "${PODMAN[@]}" pull -q "$BASE" >/dev/null 2>&1; then
    echo "==> $BASE is out of reach: making it with mmdebstrap" >&2
    rootfs=$(mktemp --suffix=.tar)
    mmdebstrap --variant=minbase --include=ca-certificates bookworm "$rootfs"
    "${PODMAN[@]}" import "$rootfs" "$BASE"
    rm -f "$rootfs"
fi

mounts=()
if [ -n "${CA_BUNDLE:-}" ]; then
    pip_conf=$(mktemp)
    printf '[global]\ncert = /etc/ssl/certs/build-ca.crt\n' >"$pip_conf"
    mounts=(-v "$CA_BUNDLE:/etc/ssl/certs/build-ca.crt:ro" -v "$pip_conf:/etc/pip.conf:ro")
fi
"${PODMAN[@]}" build --pull=never --isolation chroot --network host "${LIMITS[@]}" "${mounts[@]}" \
    --build-arg "EXTRAS=${EXTRAS:-llama-cpp,transformers}" \
    --build-arg "TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" -t "$IMAGE" .
echo "==> built $IMAGE; tests/test_container.py runs it (scripts/test.sh -k container)"
