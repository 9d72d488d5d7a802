"""ros2 launch aura_ros aura.launch.py [config:=FILE] [checkpoint:=DIR] [backend:=torch] [camera_topic:=T]
                                      [query_topic:=T] [speech_topic:=T] [namespace:=NS] [use_sim_time:=true]
                                      [lifecycle:=true]

Starts the aura node with a parameter file (default: the package's config/aura.yaml); checkpoint and backend, when
given, override the file. The node's `image`, `query` and `speech` inputs are remapped to camera_topic, query_topic and
speech_topic (relative names resolve in namespace); all outputs live in namespace. lifecycle:=true starts the managed
node (aura_lifecycle_node) instead and takes it through configure to active, the way a lifecycle manager would.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition

ARGUMENTS = {
    "config": "ROS parameter file of the node",
    "checkpoint": "AURA checkpoint directory (empty: the file's value, else the embedded default model)",
    "backend": "torch, onnxruntime or tensorrt (empty: the file's value)",
    "camera_topic": "sensor_msgs/Image topic the node answers about",
    "query_topic": "std_msgs/String topic of text questions (relative: in namespace)",
    "speech_topic": "audio_common_msgs/AudioData topic of spoken questions (relative: in namespace)",
    "use_sim_time": "true: stamp and age frames by /clock (rosbag play --clock, simulators)",
    "namespace": "namespace of the node and its topics",
    "lifecycle": "true: the managed node (aura_lifecycle_node), configured and activated by this launch",
}


def _flag(name: str, value: str) -> bool:
    if value.strip().lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"{name}:={value} is not true or false")
    return value.strip().lower() in ("true", "1")


def _to_active(node: LifecycleNode) -> list:
    """configure now; activate once the node reports inactive (configure succeeded: the model is loaded)."""
    def change(transition: int) -> EmitEvent:
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition))

    return [RegisterEventHandler(OnStateTransition(target_lifecycle_node=node, start_state="configuring",
                                                   goal_state="inactive",
                                                   entities=[change(Transition.TRANSITION_ACTIVATE)])),
            change(Transition.TRANSITION_CONFIGURE)]


def _node(context, *args, **kwargs):
    value = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    overrides = {name: value[name] for name in ("checkpoint", "backend") if value[name]}
    overrides["use_sim_time"] = _flag("use_sim_time", value["use_sim_time"])
    common = dict(
        package="aura_ros",
        name="aura",
        namespace=value["namespace"],
        parameters=[value["config"], overrides],
        remappings=[("image", value["camera_topic"]), ("query", value["query_topic"]), ("speech", value["speech_topic"])],
        output="screen",
        emulate_tty=True,
    )
    if not _flag("lifecycle", value["lifecycle"]):
        return [Node(executable="aura_node", **common)]
    node = LifecycleNode(executable="aura_lifecycle_node", **common)
    return [node] + _to_active(node)


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
        "lifecycle": "false",
    }
    declared = [DeclareLaunchArgument(name, default_value=defaults[name], description=text) for name, text in ARGUMENTS.items()]
    return LaunchDescription(declared + [OpaqueFunction(function=_node)])
