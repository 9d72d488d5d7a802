"""aura_core: amodal reasoning segmentation (AURA) without ROS: data, model, losses, metrics, pipeline."""

__version__ = "0.1.0"
