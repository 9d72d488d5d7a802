"""ros2 launch aura_ros aura.launch.py [config:=FILE] [checkpoint:=DIR] [backend:=torch] [camera_topic:=T]
                                      [query_topic:=T] [speech_topic:=T] [namespace:=NS] [use_sim_time:=true]

Starts the aura node with a parameter file (default: the package's config/aura.yaml); checkpoint and backend, when
given, override the file. The node's `image`, `query` and `speech` inputs are remapped to camera_topic, query_topic and
speech_topic (relative names resolve in namespace); all outputs live in namespace.
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
    "query_topic": "std_msgs/String topic of text questions (relative: in namespace)",
    "speech_topic": "audio_common_msgs/AudioData topic of spoken questions (relative: in namespace)",
    "use_sim_time": "true: stamp and age frames by /clock (rosbag play --clock, simulators)",
    "namespace": "namespace of the node and its topics",
}


def _node(context, *args, **kwargs):
    value = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    overrides = {name: value[name] for name in ("checkpoint", "backend") if value[name]}
    sim_time = value["use_sim_time"].strip().lower()
    if sim_time not in ("true", "false", "1", "0"):
        raise ValueError(f"use_sim_time:={value['use_sim_time']} is not true or false")
    overrides["use_sim_time"] = sim_time in ("true", "1")
    return [
        Node(
            package="aura_ros",
            executable="aura_node",
            name="aura",
            namespace=value["namespace"],
            parameters=[value["config"], overrides],
            remappings=[("image", value["camera_topic"]), ("query", value["query_topic"]), ("speech", value["speech_topic"])],
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
        "query_topic": "query",
        "speech_topic": "speech",
        "use_sim_time": "false",
        "namespace": "aura",
    }
    declared = [DeclareLaunchArgument(name, default_value=defaults[name], description=text) for name, text in ARGUMENTS.items()]
    return LaunchDescription(declared + [OpaqueFunction(function=_node)])
