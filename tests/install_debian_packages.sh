#!/usr/bin/env bash
# Debian packages the tests and benchmarks use, installed when missing:
#   dataset-fashion-mnist  IDX files under /usr/share/datasets/fashion-mnist/ (quality benchmark, its test)
#   chromium               headless rendering check of the selection report
set -euo pipefail
need=()
[ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] || need+=(dataset-fashion-mnist)
command -v chromium >/dev/null || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "installed: ${need[*]}"
