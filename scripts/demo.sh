#!/usr/bin/env bash
# demo.sh — THE main job of the README: installs what is missing, builds
# Skald, and runs the trip-booking example on the embedded default (a
# private PostgreSQL in ./.skald, started and stopped by the example), which
# prints each saga's timeline: steps, retries and compensations.
#
# Set SKALD_DATABASE_URL to run it on a database of your own instead.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSKALD_TESTS=OFF \
  >/dev/null
cmake --build build -j"$(nproc 2>/dev/null || echo 2)" --target trip_booking \
  >/dev/null
exec ./build/trip_booking
