"""aura_ros: the ROS 2 side of AURA. ROS-agnostic request logic, message conversions, the rclpy node and the bag runner.

Under a colcon build this package is merged with the interfaces rosidl generates (aura_ros.msg, aura_ros.srv), so this
file stays free of imports: see docs/ROS.md.
"""
