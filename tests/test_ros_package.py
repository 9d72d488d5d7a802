"""The ROS package files, checked with the real tools available without ROS: catkin_pkg, Debian's rosidl, rosbags."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from aura_ros import conversions, interfaces
from tests.ros_fixtures import ScenePipeline, scenes

ROOT = Path(__file__).resolve().parents[1]
INTERFACE_FILES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "msg").glob("*.msg")) + sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "srv").glob("*.srv"))
SYSTEM_PYTHON = "/usr/bin/python3"

# Runs under Debian's Python (where python3-rosidl lives): parses each .idl and prints members and their comments.
PARSE_IDL = r"""
import json, sys, pathlib
from rosidl_parser.parser import parse_idl_file
from rosidl_parser.definition import IdlLocator, Message, Service
root = pathlib.Path(sys.argv[1])
out = {}
for path in sorted(root.rglob('*.idl')):
    content = parse_idl_file(IdlLocator(root, path.relative_to(root))).content
    structs = [m.structure for m in content.get_elements_of_type(Message)]
    for srv in content.get_elements_of_type(Service):
        structs += [srv.request_message.structure, srv.response_message.structure]
    for s in structs:
        out['/'.join(s.namespaced_type.namespaced_name())] = {
            m.name: {'type': str(getattr(m.type, 'name', m.type.__class__.__name__)),
                     'comments': m.get_annotation_values('verbatim')} for m in s.members}
print(json.dumps(out))
"""


def test_package_xml_parses_with_catkin_pkg():
    from catkin_pkg.package import parse_package

    package = parse_package(str(ROOT / "package.xml"))
    assert package.name == "aura_ros" and package.package_format == 3
    assert package.get_build_type() == "ament_cmake"
    assert "rosidl_interface_packages" in [g.name for g in package.member_of_groups]
    tools = {d.name for d in package.buildtool_depends}
    assert {"ament_cmake", "ament_cmake_python", "rosidl_default_generators"} <= tools
    run = {d.name for d in package.exec_depends}
    assert {"rclpy", "rosidl_default_runtime", "launch_ros", "audio_common_msgs"} <= run
    package.validate()


def test_cmake_generates_every_interface_and_finds_what_package_xml_declares():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for path in INTERFACE_FILES:
        assert f'"{path}"' in cmake, f"{path} is not in rosidl_generate_interfaces"
    assert "ament_python_install_package(aura_core)" in cmake
    assert "ament_python_install_package(${PROJECT_NAME})" not in cmake  # rosidl_python#141
    from catkin_pkg.package import parse_package

    declared = {d.name for d in parse_package(str(ROOT / "package.xml")).build_depends}
    for found in re.findall(r"find_package\((\w+) REQUIRED\)", cmake):
        assert found in declared | {"ament_cmake", "ament_cmake_python", "rosidl_default_generators"}, found
    launch = (ROOT / "launch" / "aura.launch.py").read_text()
    executable = re.search(r'executable="(\w+)"', launch).group(1)
    assert f'"{executable}:aura_ros.node"' in cmake


@pytest.fixture(scope="module")
def parsed_idl(tmp_path_factory):
    if not shutil.which("rosidl") or not Path(SYSTEM_PYTHON).exists():
        pytest.skip("Debian's rosidl-tools / python3-rosidl are not installed")
    out = tmp_path_factory.mktemp("idl")
    args = [f"{ROOT}:{path}" for path in INTERFACE_FILES]
    # rosidl's adapter needs Debian's python3-empy and python3-catkin-pkg besides python3-rosidl and rosidl-tools.
    translated = subprocess.run(["rosidl", "translate", "--to", "idl", "-o", str(out), "aura_ros", *args],
                                capture_output=True, text=True)
    assert translated.returncode == 0 and list(out.rglob("*.idl")), f"rosidl translate failed: {translated.stderr}"
    parsed = subprocess.run([SYSTEM_PYTHON, "-c", PARSE_IDL, str(out)], capture_output=True, text=True)
    assert parsed.returncode == 0, f"rosidl_parser failed: {parsed.stderr}"
    return json.loads(parsed.stdout)


def test_rosidl_translates_and_parses_every_interface_and_every_field_is_documented(parsed_idl):
    assert {"aura_ros/msg/AmodalInstance", "aura_ros/msg/AmodalSegmentation", "aura_ros/srv/Ask_Request",
            "aura_ros/srv/Ask_Response"} <= set(parsed_idl)
    instance = parsed_idl["aura_ros/msg/AmodalInstance"]
    assert instance["amodal_box"]["type"] == "RegionOfInterest" and instance["visible_mask"]["type"] == "Image"
    assert parsed_idl["aura_ros/srv/Ask_Response"]["result"]["type"] == "AmodalSegmentation"
    for type_name, members in parsed_idl.items():
        for member, info in members.items():
            if member == "structure_needs_at_least_one_member":
                continue
            assert info["comments"], f"{type_name}.{member} has no comment"


def test_rosbags_registers_the_messages_and_round_trips_a_segmentation():
    typestore = interfaces.make_typestore("jazzy")
    assert interfaces.AUDIO_DATA_TYPE in typestore.types
    factory = interfaces.RosbagsFactory(typestore)
    scene = scenes(1, seed=5)[0]
    result = ScenePipeline([scene], objects=2).ask(scene.image, "q")
    header = conversions.make_header(factory, 5_000_000_123, "cam")
    msg = conversions.segmentation_msg(factory, header=header, question="q", status=0, result=result, latency=0.25)
    raw = factory.serialize(msg, interfaces.SEGMENTATION_TYPE)
    back = typestore.deserialize_cdr(raw, interfaces.SEGMENTATION_TYPE)
    assert back.header.stamp.nanosec == 123 and back.answer == msg.answer and len(back.instances) == 2
    np.testing.assert_array_equal(back.instances[1].amodal_mask.data, msg.instances[1].amodal_mask.data)
    assert back.latency == pytest.approx(0.25)


def test_python_package_data_finds_the_msg_files():
    directory = interfaces.msg_dir()
    assert {p.name for p in directory.glob("*.msg")} >= {"AmodalInstance.msg", "AmodalSegmentation.msg"}


def test_launch_file_compiles_and_builds_its_description():
    source = (ROOT / "launch" / "aura.launch.py").read_text()
    compile(source, "aura.launch.py", "exec")
    arguments = {"config", "checkpoint", "backend", "camera_topic", "query_topic", "speech_topic", "namespace", "use_sim_time",
                 "lifecycle"}
    for argument in arguments:
        assert f'"{argument}"' in source
    pytest.importorskip("launch_ros", reason="ROS 2 launch_ros is not installed: only the syntax was checked")
    namespace: dict = {}
    exec(compile(source, "aura.launch.py", "exec"), namespace)
    description = namespace["generate_launch_description"]()
    names = {a.name for a in description.get_launch_arguments()}
    assert names == arguments


def test_node_imports_from_this_repository_resolve_without_ros():
    """The node runs only under ROS (tests/test_ros_node.py), but what it takes from aura_ros and aura_core must exist
    everywhere: each `from aura_ros.x / aura_core.x import name` in node.py names a module and attribute that import
    here (the rosidl-generated aura_ros.msg / aura_ros.srv excepted)."""
    import ast
    import importlib

    tree = ast.parse((ROOT / "aura_ros" / "node.py").read_text(), "node.py")
    imports = [(n.module, a.name) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
               for a in n.names if n.module.split(".")[0] in {"aura_ros", "aura_core"}
               and n.module not in {"aura_ros.msg", "aura_ros.srv"}]
    assert ("aura_ros.responder", "AuraResponder") in imports and ("aura_ros.loading", "load_pipeline") in imports
    for module, name in imports:
        assert hasattr(importlib.import_module(module), name), f"node.py: from {module} import {name}"


# Stand-ins for the ament/rosidl CMake packages: they record calls and install what the real ones would (the
# generated Python package aura_ros with its empty __init__.py), so the real CMakeLists.txt is configured and
# installed by the real cmake and the resulting tree can be checked.
CMAKE_STUBS = {
    "ament_cmake": """
macro(ament_package)
  file(APPEND "${CMAKE_BINARY_DIR}/calls.txt" "ament_package\\n")
endmacro()
macro(ament_export_dependencies)
endmacro()
""",
    "ament_cmake_python": """
set(PYTHON_INSTALL_DIR "lib/python3/site-packages")
function(ament_python_install_package name)
  file(APPEND "${CMAKE_BINARY_DIR}/calls.txt" "python_package ${name}\\n")
  install(DIRECTORY "${CMAKE_CURRENT_SOURCE_DIR}/${name}" DESTINATION "${PYTHON_INSTALL_DIR}" PATTERN "__pycache__" EXCLUDE)
endfunction()
""",
    "rosidl_default_generators": """
function(rosidl_generate_interfaces target)
  cmake_parse_arguments(ARG "" "" "DEPENDENCIES" ${ARGN})
  foreach(file ${ARG_UNPARSED_ARGUMENTS})
    if(NOT EXISTS "${CMAKE_CURRENT_SOURCE_DIR}/${file}")
      message(FATAL_ERROR "interface file ${file} does not exist")
    endif()
  endforeach()
  file(APPEND "${CMAKE_BINARY_DIR}/calls.txt" "interfaces ${target} ${ARG_UNPARSED_ARGUMENTS} | ${ARG_DEPENDENCIES}\\n")
  file(WRITE "${CMAKE_BINARY_DIR}/generated/${target}/__init__.py" "")
  install(FILES "${CMAKE_BINARY_DIR}/generated/${target}/__init__.py" DESTINATION "${PYTHON_INSTALL_DIR}/${target}")
endfunction()
""",
    "std_msgs": "",
    "sensor_msgs": "",
}


def test_cmake_configures_and_installs_the_documented_layout(tmp_path):
    if not shutil.which("cmake"):
        pytest.skip("cmake is not installed")
    prefix = tmp_path / "stubs"
    for name, body in CMAKE_STUBS.items():
        directory = prefix / "share" / name / "cmake"
        directory.mkdir(parents=True)
        (directory / f"{name}Config.cmake").write_text(body)
    build, install = tmp_path / "build", tmp_path / "install"
    configured = subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build), f"-DCMAKE_PREFIX_PATH={prefix}",
                                 f"-DCMAKE_INSTALL_PREFIX={install}"], capture_output=True, text=True)
    assert configured.returncode == 0, configured.stderr
    installed = subprocess.run(["cmake", "--install", str(build)], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    calls = (build / "calls.txt").read_text().splitlines()
    assert calls[0] == "interfaces aura_ros msg/AmodalInstance.msg;msg/AmodalSegmentation.msg;srv/Ask.srv | std_msgs;sensor_msgs"
    assert "python_package aura_core" in calls and calls[-1] == "ament_package"
    site = install / "lib" / "python3" / "site-packages"
    assert (site / "aura_ros" / "__init__.py").read_text() == ""  # the generator's, not ours
    modules = {p.name for p in (ROOT / "aura_ros").glob("*.py")} - {"__init__.py"}
    assert modules <= {p.name for p in (site / "aura_ros").glob("*.py")}
    assert (site / "aura_core" / "pipeline.py").is_file()
    node = install / "lib" / "aura_ros" / "aura_node"
    assert "from aura_ros.node import main" in node.read_text() and node.stat().st_mode & 0o111
    assert (install / "lib" / "aura_ros" / "aura_bag").is_file()
    assert (install / "share" / "aura_ros" / "launch" / "aura.launch.py").is_file()
    assert (install / "share" / "aura_ros" / "config" / "aura.yaml").is_file()
