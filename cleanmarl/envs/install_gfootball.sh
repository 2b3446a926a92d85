#!/usr/bin/env bash
# Installs Google Research Football (the grf: family) into the current Python.
# gfootball builds a C++ engine from source (~10-12 min on 2 cores), so it is not part of the CI.
#   bash cleanmarl/envs/install_gfootball.sh            # Debian/Ubuntu, as root or with sudo
#   PYTHON=/path/to/python bash cleanmarl/envs/install_gfootball.sh
# Set SKIP_APT=1 if the build dependencies are already installed.
set -euo pipefail
PYTHON="${PYTHON:-python}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
requirements="$here/../../requirements-grf.txt"

if [ "${SKIP_APT:-0}" != 1 ]; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update
  # the engine's build dependencies: SDL2 family, Boost (incl. Boost.Python), OpenGL, cmake
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends \
    git cmake build-essential pkg-config python3-dev \
    libgl1-mesa-dev libsdl2-dev libsdl2-image-dev libsdl2-ttf-dev libsdl2-gfx-dev \
    libboost-all-dev libdirectfb-dev libst-dev mesa-utils xvfb x11vnc
fi

# gfootball's build imports psutil (through whichever `python3` is first on PATH) and its code
# imports six, neither declared for the build: install them first (pins from requirements-grf.txt),
# put this Python first on PATH, and build against this environment (--no-build-isolation).
"$PYTHON" -m pip install $(grep -E '^(psutil|six|wheel)==' "$requirements")
PATH="$("$PYTHON" -c 'import os, sys; print(os.path.dirname(sys.executable))'):$PATH"
export PATH
"$PYTHON" -m pip install --no-build-isolation -r "$requirements"
"$PYTHON" -c "import gfootball.env; print('gfootball installed')"
