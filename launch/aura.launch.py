"""ros2 launch aura_ros aura.launch.py [config:=FILE] [checkpoint:=DIR] [backend:=torch] [camera_topic:=T] [namespace:=NS]

Starts the aura node with a parameter file (default: the package's config/aura.yaml); checkpoint and backend, when
given, override the file. The node's `image` input is remapped to camera_topic; all outputs live in namespace.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

ARGUMENTS = {
    "config": "ROS parameter file of the node",
    "checkpoint": "AURA checkpoint directory (empty: the file's value, else the embedded default model)",
    "backend": "torch, onnxruntime or tensorrt (empty: the file's value)",
    "camera_topic": "sensor_msgs/Image topic the node answers about",
    "namespace": "namespace of the node and its topics",
}


def _node(context, *args, **kwargs):
    value = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    overrides = {name: value[name] for name in ("checkpoint", "backend") if value[name]}
    return [
        Node(
            package="aura_ros",
            executable="aura_node",
            name="aura",
            namespace=value["namespace"],
            parameters=[value["config"], overrides] if overrides else [value["config"]],
            remappings=[("image", value["camera_topic"])],
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description():
    defaults = {
        "config": PathJoinSubstitution([FindPackageShare("aura_ros"), "config", "aura.yaml"]),
        "checkpoint": "",
        "backend": "",
        "camera_topic": "/camera/image_raw",
        "namespace": "aura",
    }
    declared = [DeclareLaunchArgument(name, default_value=defaults[name], description=text) for name, text in ARGUMENTS.items()]
    return LaunchDescription(declared + [OpaqueFunction(function=_node)])
