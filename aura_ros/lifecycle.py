"""The managed (lifecycle) variant of the aura node: `ros2 run aura_ros aura_lifecycle_node`.

configure: parameters are validated, the model loads, publishers and the worker start (a bad parameter or a model
that does not load fails the transition, naming why); activate: the subscriptions and the `ask` service start;
deactivate: they stop (the model stays loaded); cleanup: the worker stops and the model is released;
shutdown: as cleanup. Drive it with `ros2 lifecycle set /aura/aura configure` then `... activate`, or a launch
file's lifecycle events / a lifecycle manager.
"""
from __future__ import annotations

import sys
import traceback
from typing import Any, Callable, List, Optional

import rclpy
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn

from aura_ros.node import AuraNodeLogic, run
from aura_ros.params import AuraParameters, ParameterError


class AuraLifecycleNode(AuraNodeLogic, LifecycleNode):
    """The aura node with a lifecycle: heavy start-up on configure, intake on activate."""

    def __init__(self, *, pipeline: Optional[Any] = None, loader: Optional[Callable[[AuraParameters], Any]] = None,
                 **node_options: Any) -> None:
        super().__init__("aura", **node_options)
        self._pipeline, self._loader = pipeline, loader
        self.responder = None
        self.dropped_callbacks = 0
        self.params = AuraParameters()  # the defaults until configure reads the real ones (executor_threads)

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._configure(self._pipeline, self._loader)
        except ParameterError as error:
            self.get_logger().error(str(error))
            self._release()
            return TransitionCallbackReturn.FAILURE
        except Exception as error:  # noqa: BLE001 - the transition fails with a message instead of a traceback
            self.get_logger().error(f"cannot configure: {type(error).__name__}: {error}")
            self.get_logger().debug(traceback.format_exc())
            self._release()
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(f"configured: backend {self.params.backend} on {self.params.device}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._activate()
        self.get_logger().info("ready: active")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._deactivate()
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _teardown(self) -> None:
        self._release()
        for publisher in list(getattr(self, "_outputs", {}).values()) + [getattr(self, "_detections", None),
                                                                          getattr(self, "_diagnostics", None)]:
            if publisher is not None:
                self.destroy_publisher(publisher)
        for timer in list(self.timers):
            self.destroy_timer(timer)
        self._outputs, self._detections, self._diagnostics, self.responder = {}, None, None, None

    def destroy_node(self) -> None:
        self._release()
        super().destroy_node()


def main(argv: Optional[List[str]] = None) -> int:
    rclpy.init(args=argv)
    return run(AuraLifecycleNode())


if __name__ == "__main__":
    sys.exit(main())
