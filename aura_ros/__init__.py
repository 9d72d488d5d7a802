"""aura_ros: the ROS 2 side of AURA. ROS-agnostic request logic, message conversions, the rclpy node and the bag runner.

Under a colcon build this package is merged with the interfaces rosidl generates (aura_ros.msg, aura_ros.srv), so this
file stays free of imports (one path extension below): see docs/ROS.md.
"""

# In a source checkout with a colcon workspace of this package sourced (scripts/ros_build.sh), the generated
# aura_ros.msg / aura_ros.srv live in the workspace's aura_ros: extend this package's path so they are found there
# (the checkout's own aura_ros/msg holds only the .msg files, a namespace portion that a real package outranks).
__path__ = __import__("pkgutil").extend_path(__path__, __name__)
