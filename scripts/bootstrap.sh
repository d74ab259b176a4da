#!/usr/bin/env bash
# bootstrap.sh — installs what building and testing Skald needs (Debian and
# Ubuntu, apt-get). Quiet and quick when everything is there; as root it
# installs what is missing (apt-get update only then); otherwise it prints
# the exact command to run and exits 1. scripts/bootstrap.sh --fuzz adds
# what fuzzing needs (clang, libFuzzer).
set -euo pipefail

pkgs=(build-essential cmake pkg-config libpq-dev libuv1-dev libcjson-dev
      libcriterion-dev libhttp-parser-dev libcurl4-openssl-dev valgrind)

# --fuzz: also clang and libFuzzer (its runtime is in libclang-rt-dev), for
# scripts/fuzz.sh. The normal build and tests never need them.
fuzz=0
if [ "${1:-}" = "--fuzz" ]; then
  fuzz=1
  pkgs+=(clang libclang-rt-dev)
fi

if ! command -v dpkg-query >/dev/null 2>&1; then
  # Not Debian: check the tools and libraries directly.
  for c in cc cmake pkg-config; do
    command -v "$c" >/dev/null 2>&1 || {
      echo "bootstrap: $c not found; install a C toolchain, cmake and" \
           "pkg-config" >&2; exit 1; }
  done
  if [ $fuzz -eq 1 ] && ! command -v clang >/dev/null 2>&1; then
    echo "bootstrap: clang not found; install clang with libFuzzer" >&2
    exit 1
  fi
  for m in libpq libuv libcjson criterion; do
    pkg-config --exists "$m" || {
      echo "bootstrap: pkg-config cannot find $m; install its" \
           "development package" >&2; exit 1; }
  done
  exit 0
fi

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

missing=()
for p in "${pkgs[@]}"; do
  installed "$p" || missing+=("$p")
done
# Any PostgreSQL server will do; prefer 15 where the archive has it.
need_server=0
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need_server=1

[ ${#missing[@]} -eq 0 ] && [ $need_server -eq 0 ] && exit 0

server_pkg() {
  if apt-cache show postgresql-15 >/dev/null 2>&1; then
    echo postgresql-15
  else
    echo postgresql
  fi
}

if [ "$(id -u)" -ne 0 ]; then
  if [ $need_server -eq 1 ]; then missing+=("$(server_pkg)"); fi
  echo "bootstrap: missing packages: ${missing[*]}" >&2
  echo "sudo apt-get install -y ${missing[*]}"
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
if [ $need_server -eq 1 ]; then missing+=("$(server_pkg)"); fi
echo "bootstrap: installing ${missing[*]}" >&2
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
