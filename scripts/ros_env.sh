# shellcheck shell=bash
# SOURCE this file: puts a ROS 2 on the environment for building and running aura_ros, or returns 1 saying why not.
# Looked for in this order: a ROS 2 already sourced (ROS_DISTRO set and rclpy importable), ../shared/ros2/activate
# beside the repository (the relocatable Jazzy core CI uses), /opt/ros/jazzy, /opt/ros/humble.
# With AURA_ROS_WS set to a built workspace (scripts/ros_build.sh), its install/setup.bash is sourced as well.
_aura_ros_env() {
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." >/dev/null 2>&1 && pwd)" || return 1
  if [ -n "${ROS_DISTRO:-}" ] && python3 -c "import rclpy" >/dev/null 2>&1; then
    :
  elif [ -f "$root/../shared/ros2/activate" ]; then
    # shellcheck disable=SC1091
    source "$root/../shared/ros2/activate" || return 1
  else
    local distro found=""
    for distro in jazzy humble; do
      if [ -f "/opt/ros/$distro/setup.bash" ]; then
        set +u  # ROS setup scripts read unset variables
        # shellcheck disable=SC1090
        source "/opt/ros/$distro/setup.bash" && found=$distro
        break
      fi
    done
    if [ -z "$found" ]; then
      echo "no ROS 2: neither $root/../shared/ros2/activate nor /opt/ros/{jazzy,humble}/setup.bash exists" >&2
      return 1
    fi
  fi
  if [ -n "${AURA_ROS_WS:-}" ] && [ -f "$AURA_ROS_WS/install/setup.bash" ]; then
    set +u
    # shellcheck disable=SC1091
    source "$AURA_ROS_WS/install/setup.bash" || return 1
  fi
  export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_cyclonedds_cpp}"
  return 0
}
_aura_ros_env
