#!/usr/bin/env bash
# Install the system packages ManiSkill3 (SAPIEN) needs: the Vulkan loader and,
# on machines without a working GPU Vulkan driver, Mesa >= 25's software
# rasteriser (lavapipe); and a headless browser (Chromium) in which the tests
# load report.html and play its videos. Debian 12 ships Mesa 22.3, which SAPIEN rejects, so
# there Mesa comes from bookworm-backports. Machines with an NVIDIA driver keep it.
# Idempotent: a stamp file records success; steps already done are skipped.
set -euo pipefail

STAMP="${1:-.venv/.system-ok}"
[ -f "$STAMP" ] && exit 0

SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "setup-system: run as root or install sudo (needs apt-get)" >&2; exit 1; fi
fi
export DEBIAN_FRONTEND=noninteractive

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
mesa_version() { dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null | sed -E 's/^[0-9]+://; s/[^0-9.].*//'; }
mesa_ok() { local v; v=$(mesa_version); [ -n "$v" ] && [ "${v%%.*}" -ge 25 ]; }

need=()
for p in libvulkan1 libegl1 libgl1 libglvnd0 libx11-6 libxext6 libgomp1; do have_pkg "$p" || need+=("$p"); done
# Debian's python3 needs python3-venv for `python3 -m venv`.
python3 -c "import ensurepip, venv" 2>/dev/null || need+=(python3-venv)

if ! command -v apt-get >/dev/null; then
  echo "setup-system: no apt-get; install the Vulkan loader (libvulkan1) and Mesa >= 25 (lavapipe) or a GPU Vulkan driver by hand" >&2
  exit 1
fi

nvidia=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then nvidia=1; fi

updated=0
apt_update() { [ $updated = 1 ] || { $SUDO apt-get update -qq; updated=1; }; }

if [ ${#need[@]} -gt 0 ]; then
  apt_update
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

if [ $nvidia = 1 ]; then
  echo "setup-system: NVIDIA driver found; keeping it (no software Vulkan installed)"
elif ! mesa_ok; then
  . /etc/os-release
  if [ "${ID:-}" = debian ] && [ "${VERSION_CODENAME:-}" = bookworm ]; then
    list=/etc/apt/sources.list.d/bookworm-backports.sources
    if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
      printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' | $SUDO tee "$list" >/dev/null
    fi
    updated=0; apt_update
    $SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports mesa-vulkan-drivers
  else
    apt_update
    $SUDO apt-get install -y -qq --no-install-recommends mesa-vulkan-drivers
  fi
  if ! mesa_ok; then
    echo "setup-system: WARNING: mesa-vulkan-drivers $(mesa_version) < 25; SAPIEN may reject the software Vulkan device. Install Mesa >= 25 or use a GPU machine." >&2
  fi
fi
# Headless Chromium for the report.html test (Debian's package; on Ubuntu the package wants snapd, which
# containers lack: there the test says it is skipped and why, and everything else still works).
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  apt_update
  $SUDO apt-get install -y -qq --no-install-recommends chromium \
    || echo "setup-system: WARNING: could not install chromium; the browser test of report.html will be skipped" >&2
fi

mkdir -p "$(dirname "$STAMP")"
touch "$STAMP"
echo "setup-system: done"
