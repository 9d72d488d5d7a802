"""The node under a real ROS 2, run as a robot runs it: `colcon build`, `ros2 interface`, `ros2 launch`, `ros2 run`,
topics and the `ask` service between separate processes, SIGINT, `colcon test`.

ROS 2 comes from scripts/ros_env.sh: ../shared/ros2 beside the checkout (CI), else /opt/ros/{jazzy,humble}; with
none of them the module skips, saying so. The package is built once per session (scripts/ros_build.sh into
$AURA_ROS_WS or .ros_ws: incremental, so a CI run that built it already pays seconds), one node is launched for the
whole module with the embedded default model, and a client process (tests/ros_client.py) talks to it.
"""
from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "/aura_test"
SIM_SEC = 1_000  # the /clock the client publishes: the node runs with use_sim_time:=true
READY = "ready: backend"
STARTUP_TIMEOUT = 240.0  # a loaded 2-core CI machine takes a while to import torch and load the model


def _ros_reason() -> Optional[str]:
    """None when a ROS 2 is available (the same search as scripts/ros_env.sh), else why the module skips."""
    if os.environ.get("ROS_DISTRO"):
        return None
    candidates = [ROOT.parent / "shared" / "ros2" / "activate"] + [Path(f"/opt/ros/{d}/setup.bash") for d in ("jazzy", "humble")]
    if any(path.is_file() for path in candidates):
        return None
    return f"no ROS 2 here: none of {[str(p) for p in candidates]} exists and no ROS 2 is sourced"


_REASON = _ros_reason()
if _REASON:
    pytest.skip(_REASON, allow_module_level=True)
pytestmark = pytest.mark.slow  # a colcon build and separate ROS processes: CI runs it, `-m "not slow"` leaves it out


def _shell_env(script: str, env: Dict[str, str]) -> Dict[str, str]:
    out = subprocess.run(["bash", "-c", f"{script} && env -0"], env=env, capture_output=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"{script} failed: {out.stderr.decode(errors='replace')[-3000:]}")
    return dict(line.split("=", 1) for line in out.stdout.decode().split("\0") if "=" in line)


@pytest.fixture(scope="session")
def ros_ws(tmp_path_factory) -> Dict[str, Any]:
    """Builds the package (colcon) and returns {"path", "env"}: the environment with ROS 2 and the workspace sourced."""
    ws = Path(os.environ.get("AURA_ROS_WS") or ROOT / ".ros_ws")
    base = dict(os.environ)
    start = time.monotonic()
    built = subprocess.run(["bash", str(ROOT / "scripts" / "ros_build.sh"), str(ws)], env=base, capture_output=True,
                           text=True, timeout=900)
    assert built.returncode == 0, f"colcon build failed:\n{built.stdout[-2000:]}\n{built.stderr[-4000:]}"
    env = _shell_env(f"source {ROOT / 'scripts' / 'ros_env.sh'}", {**base, "AURA_ROS_WS": str(ws)})
    env.update(
        ROS_DOMAIN_ID=str(random.Random(os.getpid() ^ time.time_ns()).randint(101, 215)),  # not CI's in-process domain
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
        PYTHONUNBUFFERED="1",
        RCUTILS_COLORIZED_OUTPUT="0",
        ROS_HOME=str(tmp_path_factory.mktemp("ros_home")),  # launch's log files stay out of ~/.ros
    )
    return {"path": ws, "env": env, "build_seconds": time.monotonic() - start}


def _run(args: List[str], ros_ws: Dict[str, Any], timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=ros_ws["env"], capture_output=True, text=True, timeout=timeout, cwd=ros_ws["path"], **kwargs)


class Launched:
    """A process whose output goes to a file, polled for lines."""

    def __init__(self, args: List[str], env: Dict[str, str], log: Path, cwd: Path) -> None:
        self.log = log
        self.handle = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(args, env=env, stdout=self.handle, stderr=subprocess.STDOUT, cwd=cwd,
                                        start_new_session=True)

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output:
                return True
            if self.process.poll() is not None:
                return text in self.output
            time.sleep(0.2)
        return False

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.handle.close()
        return self.process.returncode


class ClientProcess:
    """tests/ros_client.py in its own process: one JSON command per line, one JSON reply per line."""

    def __init__(self, ros_ws: Dict[str, Any], namespace: str) -> None:
        self.process = subprocess.Popen(
            ["python3", str(ROOT / "tests" / "ros_client.py"), namespace], env=ros_ws["env"], cwd=ros_ws["path"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        assert self._reply(60).get("ready"), "the client did not start"

    def _reply(self, timeout: float) -> Dict[str, Any]:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"the client did not reply within {timeout} s")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the client died: {self.process.stderr.read()[-3000:]}")
        return json.loads(line)

    def __call__(self, op: str, timeout: float = 120, **fields: Any) -> Dict[str, Any]:
        self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        reply = self._reply(timeout)
        assert reply["ok"], reply.get("error")
        return reply

    def close(self) -> None:
        try:
            self.process.stdin.write('{"op": "quit"}\n')
            self.process.stdin.flush()
            self.process.wait(20)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait(10)


@pytest.fixture(scope="module")
def launched(ros_ws, tmp_path_factory):
    """`ros2 launch aura_ros aura.launch.py` with the embedded default model, use_sim_time and test topic names."""
    log = tmp_path_factory.mktemp("launch") / "launch.log"
    node = Launched(
        ["ros2", "launch", "aura_ros", "aura.launch.py", f"namespace:={NAMESPACE}", "camera_topic:=camera",
         "query_topic:=query", "speech_topic:=speech", "use_sim_time:=true"],
        ros_ws["env"], log, ros_ws["path"])
    started = time.monotonic()
    ready = node.wait_for(READY, STARTUP_TIMEOUT)
    if not ready:
        node.stop(signal.SIGKILL)
        pytest.fail(f"the launched node did not get ready:\n{node.output[-4000:]}")
    node.startup_seconds = time.monotonic() - started
    yield node
    node.stop()


@pytest.fixture(scope="module")
def client(ros_ws, launched):
    process = ClientProcess(ros_ws, NAMESPACE)
    process("clock", sec=SIM_SEC)
    process("connect", timeout=60)
    time.sleep(0.3)  # a few /clock messages reach the node
    yield process
    process.close()


def test_colcon_build_installs_interfaces_node_launch_file_and_config(ros_ws):
    install = ros_ws["path"] / "install" / "aura_ros"
    for relative in ("lib/aura_ros/aura_node", "lib/aura_ros/aura_lifecycle_node", "lib/aura_ros/aura_bag",
                     "share/aura_ros/launch/aura.launch.py",
                     "share/aura_ros/config/aura.yaml", "share/aura_ros/package.xml"):
        assert (install / relative).exists(), relative
    assert list(install.glob("lib/python3*/site-packages/aura_core/__init__.py")), "aura_core is not installed"
    shown = _run(["ros2", "interface", "show", "aura_ros/msg/AmodalSegmentation"], ros_ws)
    assert shown.returncode == 0, shown.stderr
    assert "AmodalInstance[] instances" in shown.stdout and "sensor_msgs/RegionOfInterest amodal_box" in shown.stdout
    service = _run(["ros2", "interface", "show", "aura_ros/srv/Ask"], ros_ws)
    assert service.returncode == 0 and "string question" in service.stdout, service.stderr


_clock = {"sec": SIM_SEC}


def _new_scene(client: ClientProcess) -> None:
    """Moves the simulated clock past max_image_age (2 s in config/aura.yaml) before a new picture is shown.

    The node answers against the frame whose embedding its idle worker cached while that frame is within max_image_age
    (docs/ROS.md); with the clock standing still every earlier frame would stay "fresh". Advancing it makes the
    earlier frames stale, so the answer is about the frame sent next, however busy the machine is."""
    _clock["sec"] += 10
    client("clock", sec=_clock["sec"])
    time.sleep(0.2)  # the node has the new time before the next frames arrive


def _frame_stamp(index: int) -> Dict[str, int]:
    return {"sec": SIM_SEC + index, "nanosec": 1000 + index}


def _check_answer(seg: Dict[str, Any], received: Dict[str, Any], stamp: Dict[str, int], frame_id: str,
                  size: List[int]) -> None:
    assert seg["status"] == 0, seg["status_message"]
    assert seg["stamp"] == [stamp["sec"], stamp["nanosec"]] and seg["frame_id"] == frame_id
    assert seg["size"] == size
    for index, inst in enumerate(seg["instances"]):
        for mask in (inst["amodal_mask"], inst["visible_mask"]):
            assert mask["decodable"] and set(mask["values"]) <= {0, 255}, inst
            assert mask["frame_id"] == frame_id and mask["stamp"] == seg["stamp"]
        if inst["id"] is not None:
            assert inst["id"] == index + 1
    same = [m for m in received["images"]["visible_labels"] if m["stamp"] == seg["stamp"]]
    assert same, "no visible_labels image for the answered frame"
    labels = same[-1]
    assert labels["encoding"] == "mono8" and labels["size"] == size and labels["frame_id"] == frame_id
    assert set(labels["values"]) <= set(range(len(seg["instances"]) + 1))
    overlays = [m for m in received["images"]["overlay"] if m["stamp"] == seg["stamp"]]
    assert overlays and overlays[-1]["encoding"] == "rgb8" and overlays[-1]["size"] == size


def test_launched_node_answers_text_queries_about_rgb8_and_bgr8_frames(client):
    # No frame yet: the node says so, stamped with its (simulated) clock: use_sim_time is in force.
    client("query", text="what is on the table?")
    client("wait", count=1, timeout=60)
    first = client("received")["segmentations"][0]
    assert first["status"] == 1 and first["stamp"][0] == SIM_SEC, first  # STATUS_NO_IMAGE at /clock time
    answered = 1
    for index, (encoding, width, height) in enumerate([("rgb8", 161, 97), ("bgr8", 203, 121)], start=1):
        stamp = _frame_stamp(index)
        _new_scene(client)
        client("image", width=width, height=height, encoding=encoding, seed=index, frame_id=f"cam_{encoding}",
               repeat=4, **stamp)
        client("query", text=f"which object is hidden? ({encoding})")
        answered += 1
        assert client("wait", count=answered, timeout=120)["count"] == answered
        time.sleep(0.5)  # the labels and overlay follow the segmentation
        received = client("received")
        seg = received["segmentations"][answered - 1]
        assert seg["question"] == f"which object is hidden? ({encoding})"
        _check_answer(seg, received, stamp, f"cam_{encoding}", [height, width])
        assert seg["answer"] and received["texts"]["answer"], "no answer text"


def test_ask_service_answers(client):
    stamp = _frame_stamp(7)
    _new_scene(client)
    client("image", width=99, height=75, encoding="rgb8", seed=7, frame_id="cam_ask", repeat=3, **stamp)
    reply = client("ask", question="where is the box?", request_id="req-42", timeout=120)
    result = reply["result"]
    assert result["status"] == 0 and result["question"] == "where is the box?", result
    assert result["stamp"] == [stamp["sec"], stamp["nanosec"]] and result["frame_id"] == "cam_ask"
    if result["request_id"] is not None:
        assert result["request_id"] == "req-42"


def test_a_late_subscriber_gets_the_last_segmentation(client):
    client("ask", question="what is red?", request_id="late-1", timeout=120)
    got = client("late", timeout=10)["got"]
    assert got and got[-1]["question"] == "what is red?", got


@pytest.mark.parametrize("stamped", [False, True], ids=["AudioData", "AudioDataStamped"])
def test_a_spoken_question_gives_a_transcript_and_a_segmentation(client, stamped):
    """espeak-ng speech as audio_common_msgs/AudioData chunks of 0.1 s on `speech` (or AudioDataStamped on
    `speech_stamped`) -> transcript, then an answer ("speech-N")."""
    from tests.ros_fixtures import espeak_available, speak

    reason = espeak_available()
    if reason:
        pytest.skip(reason)
    stamp = _frame_stamp(9)
    _new_scene(client)
    client("image", width=96, height=64, encoding="rgb8", seed=9, frame_id="cam_speech", repeat=3, **stamp)
    received = client("received")
    before, heard_before = len(received["segmentations"]), len(received["texts"]["transcript"])
    pcm = speak("where is the red box", silence=1.0)
    chunk = 3200  # 0.1 s of 16 kHz S16LE
    for offset in range(0, len(pcm), chunk):
        client("audio", hex=pcm[offset:offset + chunk].hex(), stamped=stamped)
        if offset % (chunk * 5) == 0:  # the camera keeps the frame fresh while the person speaks
            client("image", width=96, height=64, encoding="rgb8", seed=9, frame_id="cam_speech", **stamp)
        time.sleep(0.02)
    assert client("wait", count=before + 1, timeout=120)["count"] > before, "no answer to the spoken question"
    received = client("received")
    assert len(received["texts"]["transcript"]) > heard_before, "no transcript"
    heard = received["texts"]["transcript"][-1].lower()
    assert "box" in heard or "red" in heard, heard
    seg = [s for s in received["segmentations"][before:] if s["request_id"] and s["request_id"].startswith("speech-")]
    assert seg and seg[-1]["question"].lower().strip(" .?") == heard.strip(" .?"), (seg, heard)
    assert seg[-1]["status"] == 0 and seg[-1]["frame_id"] == "cam_speech", seg[-1]


def _string_cdr(payload: bytes) -> str:
    """A serialized std_msgs/String (CDR, little endian) holding `payload` as is: how a non-UTF-8 string arrives."""
    import struct

    return (b"\x00\x01\x00\x00" + struct.pack("<I", len(payload) + 1) + payload + b"\x00").hex()


def test_fuzz_nothing_takes_the_node_down(client, launched):
    """Every input class, interleaved with good questions: each good one is still answered, the bad ones are dropped,
    the process stays up. Counts are printed (pytest -s) for the record."""
    good_frame = dict(width=64, height=48, encoding="rgb8", seed=3, frame_id="cam_fuzz", **_frame_stamp(20))
    bad_images = {
        "unknown encoding": dict(width=32, height=24, encoding="bayer_rggb8", fill=7, data_len=32 * 24),
        "wrong encoding size": dict(width=32, height=24, encoding="rgba8", fill=7, data_len=32 * 24 * 3),
        "step too small": dict(width=32, height=24, encoding="rgb8", step=10, seed=1),
        "data too short": dict(width=32, height=24, encoding="rgb8", data_len=100, seed=1),
        "empty": dict(width=0, height=0, encoding="rgb8", fill=0, data_len=0),
        "yuyv odd width": dict(width=33, height=24, encoding="yuyv", fill=128, data_len=33 * 24 * 2),
        "8K mono8": dict(width=7680, height=4320, encoding="mono8", fill=90, data_len=7680 * 4320),
    }
    bad_queries = {"empty": "", "blank": "   \n\t ", "10 kB": "why " * 2560}
    audio = {"garbage": os.urandom(3001).hex(), "odd length": os.urandom(1).hex(), "empty": ""}
    sent_good = 0
    outcome: Dict[str, int] = {}

    def ask_good(tag: str) -> None:
        nonlocal sent_good
        _new_scene(client)
        client("image", repeat=2, **good_frame)
        reply = client("ask", question=f"is it still there? ({tag})", request_id=f"good-{tag}", timeout=120)
        assert reply["result"]["status"] == 0, (tag, reply["result"])
        assert reply["result"]["frame_id"] == "cam_fuzz", (tag, reply["result"])
        sent_good += 1

    ask_good("start")
    for name, image in bad_images.items():
        client("image", **{"seed": 0, **image})
        ask_good(f"image {name}")
    for name, text in bad_queries.items():
        client("query", text=text)
        ask_good(f"query {name}")
    client("query", raw_hex=_string_cdr(b"\xff\xfe not utf-8 \xc3\x28"))
    ask_good("query not utf-8")
    for name, data in audio.items():
        client("audio", hex=data)
        ask_good(f"audio {name}")
    before = len(client("received")["segmentations"])
    start = time.monotonic()
    for index in range(200):  # a flood: 200 questions within about a second
        client("query", text=f"flood {index}")
        time.sleep(max(0.0, start + (index + 1) / 200 - time.monotonic()))
    flood_seconds = time.monotonic() - start
    count, quiet_since = -1, time.monotonic()  # the queue drains (dropping the oldest while full) until answers stop
    while time.monotonic() - quiet_since < 1.5 and time.monotonic() - start < 120:
        now_count = len(client("received")["segmentations"])
        if now_count != count:
            count, quiet_since = now_count, time.monotonic()
        time.sleep(0.1)
    ask_good("after the flood")
    flood = [seg for seg in client("received")["segmentations"][before:] if seg["question"].startswith("flood ")]
    for seg in flood:
        outcome[{0: "ok", 3: "dropped"}.get(seg["status"], f"status {seg['status']}")] = \
            outcome.get({0: "ok", 3: "dropped"}.get(seg["status"], f"status {seg['status']}"), 0) + 1
    assert launched.process.poll() is None, launched.output[-4000:]
    print(f"\nfuzz: {sent_good} good questions answered; survived {len(bad_images)} hostile images (6 malformed, one "
          f"8K), {len(bad_queries) + 1} bad queries, {len(audio)} bad audio chunks; flood of 200 in {flood_seconds:.2f} s "
          f"-> {outcome}, no segmentation for {200 - len(flood)} (the query subscription keeps the newest 10)")
    output = launched.output
    assert "Traceback" not in output, output[-4000:]
    assert "dropping image" in output or "dropping images" in output, output[-4000:]
    assert flood and outcome.get("dropped", 0) > 0, outcome


def _bad_start(ros_ws: Dict[str, Any], tmp: Path, name: str, parameters: str) -> Launched:
    path = tmp / f"{name}.yaml"
    path.write_text(f"/**:\n  ros__parameters:\n{parameters}")
    return Launched(["ros2", "run", "aura_ros", "aura_node", "--ros-args", "--params-file", str(path)],
                    ros_ws["env"], tmp / f"{name}.log", ros_ws["path"])


def test_bad_parameter_files_and_startup_errors_stop_the_node_with_a_clean_message(ros_ws, tmp_path):
    empty_checkpoint = tmp_path / "not_a_checkpoint"
    empty_checkpoint.mkdir()
    runs = {
        "unknown_key": (_bad_start(ros_ws, tmp_path, "unknown_key", "    queue_depht: 3\n"), "queue_depht"),
        "wrong_type": (_bad_start(ros_ws, tmp_path, "wrong_type", "    queue_depth: four\n"), "queue_depth"),
        "bad_checkpoint": (_bad_start(ros_ws, tmp_path, "bad_checkpoint", f"    checkpoint: '{empty_checkpoint}'\n"),
                           str(empty_checkpoint)),
    }
    for name, (run, key) in runs.items():
        try:
            code = run.process.wait(STARTUP_TIMEOUT)
        except subprocess.TimeoutExpired:
            run.stop(signal.SIGKILL)
            pytest.fail(f"{name}: the node kept running:\n{run.output[-3000:]}")
        run.handle.close()
        output = run.output
        assert code != 0, f"{name}: exit code 0\n{output}"
        assert key in output, f"{name}: the message does not name {key!r}:\n{output}"
        assert "Traceback" not in output, f"{name}: raw traceback:\n{output}"


def test_launch_with_lifecycle_brings_the_managed_node_to_active(ros_ws, tmp_path):
    """`lifecycle:=true`: the managed node is configured (the model loads) and then activated by the launch itself."""
    namespace = "aura_managed"
    node = Launched(["ros2", "launch", "aura_ros", "aura.launch.py", f"namespace:={namespace}", "lifecycle:=true"],
                    ros_ws["env"], tmp_path / "lifecycle.log", ros_ws["path"])
    try:
        assert node.wait_for("ready: active", STARTUP_TIMEOUT), node.output[-4000:]
        assert "configured: backend torch" in node.output
        state = _run(["ros2", "lifecycle", "get", f"/{namespace}/aura"], ros_ws, timeout=60)
        assert state.returncode == 0 and state.stdout.startswith("active"), state.stdout + state.stderr
    finally:
        node.stop()
    assert "Traceback" not in node.output, node.output[-4000:]


def test_colcon_test_runs_the_package_tests(ros_ws):
    args = ["colcon", "--log-base", str(ros_ws["path"] / "log"), "test", "--base-paths", "src", "--build-base", "build",
            "--install-base", "install", "--packages-select", "aura_ros", "--ctest-args", "-R", "test_ros_conversions"]
    import shutil

    for stale in ("test_results", "Testing"):  # results of earlier runs would be counted by test-result
        shutil.rmtree(ros_ws["path"] / "build" / "aura_ros" / stale, ignore_errors=True)
    tested = _run(args, ros_ws, timeout=600)
    assert tested.returncode == 0, tested.stdout[-3000:] + tested.stderr[-3000:]
    result = _run(["colcon", "test-result", "--test-result-base", "build/aura_ros", "--all"], ros_ws)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 errors, 0 failures" in result.stdout and "tests" in result.stdout, result.stdout


def test_sigint_ends_the_launched_node_with_exit_0_and_no_traceback(launched):
    """Last in the module: stops the shared node the way a user does (Ctrl-C on ros2 launch)."""
    code = launched.stop(signal.SIGINT, timeout=60)
    output = launched.output
    assert code == 0, output[-3000:]
    assert "process has finished cleanly" in output, output[-3000:]
    assert "Traceback" not in output and "exception" not in output.lower(), output[-3000:]
