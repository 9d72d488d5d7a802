"""The AURA pipeline that the node parameters describe; used by the rclpy node, the bag runner and the benchmarks."""
from __future__ import annotations

from typing import Any

from aura_ros.params import AuraParameters


def load_pipeline(params: AuraParameters) -> Any:
    """The AURA pipeline the parameters ask for: a named random-init config, a checkpoint, or the embedded default.

    With engine_dir the SAM stages come from the backend's engines there instead of the checkpoint directory.
    aura_core (torch, transformers) is imported here, on first use, not when aura_ros is imported.
    """
    from aura_core.pipeline import AuraPipeline

    options = dict(device=params.device, mask_threshold=params.mask_threshold, max_new_tokens=params.max_new_tokens)
    if params.model_config:
        return AuraPipeline.from_config(params.model_config, seed=params.seed, **options)
    return AuraPipeline.from_pretrained(
        params.checkpoint or None, backend=params.backend, export_dir=params.engine_dir or None, **options
    )
