#!/usr/bin/env bash
# System packages the registry-mirror tests need: a real upstream registry (CNCF distribution),
# a real client (containerd + ctr), skopeo and umoci. Idempotent; sourced by .ci/run.
# Nothing is started system-wide: the tests start their own registry and containerd on loopback.
_rayfly_mirror_pkgs=()
command -v docker-registry >/dev/null 2>&1 || _rayfly_mirror_pkgs+=(docker-registry)
command -v containerd >/dev/null 2>&1 || _rayfly_mirror_pkgs+=(containerd)
command -v ctr >/dev/null 2>&1 || _rayfly_mirror_pkgs+=(containerd)
command -v skopeo >/dev/null 2>&1 || _rayfly_mirror_pkgs+=(skopeo)
command -v umoci >/dev/null 2>&1 || _rayfly_mirror_pkgs+=(umoci)
if [ "${#_rayfly_mirror_pkgs[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker-registry containerd skopeo umoci
fi
# Debian's docker-registry package may start a system service on install; the tests don't use it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl stop docker-registry || true
fi
unset _rayfly_mirror_pkgs
