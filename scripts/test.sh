#!/usr/bin/env bash
# The project's test command (README, .ci/run): fetches the default model once, then runs every
# test. Fixtures are committed; no Python, torch or GPU is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh >/dev/null
cargo test --all-targets 2>&1
