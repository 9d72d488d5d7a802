#!/usr/bin/env bash
# colcon build of this repository as the ROS 2 package aura_ros, in a workspace outside the source tree:
#   bash scripts/ros_build.sh [WORKSPACE]        (default: .ros_ws in the repository, ignored by git and colcon)
# then `source WORKSPACE/install/setup.bash`. Incremental: a second run only reinstalls what changed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
ws="$(mkdir -p "${1:-$root/.ros_ws}" && cd "${1:-$root/.ros_ws}" && pwd)"
# shellcheck disable=SC1091
source "$root/scripts/ros_env.sh"
command -v colcon >/dev/null || { echo "colcon is not installed: pip install colcon-common-extensions" >&2; exit 1; }
mkdir -p "$ws/src"
touch "$ws/COLCON_IGNORE"  # a colcon build run from the repository root must not crawl into this workspace
[ -L "$ws/src/aura_ros" ] || ln -sfn "$root" "$ws/src/aura_ros"
cd "$ws"
set +u
colcon --log-base "$ws/log" build --base-paths src --build-base build --install-base install \
  --event-handlers console_direct- >"$ws/build.log" 2>&1 ||
  { tail -n 60 "$ws/build.log" >&2; echo "colcon build failed (full log: $ws/build.log)" >&2; exit 1; }
echo "built aura_ros in $ws (source $ws/install/setup.bash)"
