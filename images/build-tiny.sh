#!/usr/bin/env bash
# Build the tiny test guests into images/out/tiny/ (make: only what changed).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
make -s -C "$here/tiny" OUT="$here/out/tiny"
