"""Export a checkpoint's SAM-side graphs to ONNX for an exported backend, and open that backend on them once.

    python training/export.py --checkpoint runs/default/model --out runs/default/model/onnx
    python training/export.py --checkpoint CKPT --out DIR --backend tensorrt --fp16   # on a CUDA machine with TensorRT

Writes image_encoder.onnx, visible_branch.onnx, amodal_branch.onnx (+ .onnx.data for graphs over 2 GB) and
manifest.json. The backend (any exported one of aura_core/backends.py; default onnxruntime) is then opened on the
export, so a broken export fails here; --backend tensorrt thereby builds DIR/engines/*.engine. docs/EXPORT.md explains
the files.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from aura_core.backends import BACKENDS, exported_backends, open_backend
from aura_core.export.manifest import ExportError
from aura_core.export.onnx_export import DEFAULT_OPSET, EXPORTERS, export_checkpoint
from aura_core.model.checkpoint import CheckpointError

LOG = logging.getLogger("aura.export")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint directory (config.json, ...)")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--backend", choices=exported_backends(), default="onnxruntime",
                        help="the backend the export is for; it is opened on the export (tensorrt: builds the engines)")
    parser.add_argument("--fp16", action="store_true", help="fp16 TensorRT engines (norm layers stay fp32)")
    parser.add_argument("--exporter", choices=EXPORTERS, default="torchscript", help="torch.onnx exporter")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--workspace-mib", type=int, default=1024, help="TensorRT builder workspace limit")
    parser.add_argument("--max-seg", type=int, default=16, help="TensorRT profile: most [SEG]s per decoder call")
    parser.add_argument("--opt-seg", type=int, default=4, help="TensorRT profile: [SEG] count tuned for")
    parser.add_argument("--device", default=None, help="device the backend is opened on (default: the backend's own, "
                        + ", ".join(f"{name} {BACKENDS[name].default_device}" for name in exported_backends()) + ")")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.fp16 and args.backend != "tensorrt":
        parser.error("--fp16 applies to --backend tensorrt (the ONNX files stay fp32)")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        manifest, model = export_checkpoint(
            args.checkpoint, args.out, exporter=args.exporter, opset=args.opset, progress=not args.no_progress
        )
        options: Dict[str, Any] = {}
        if args.backend == "tensorrt":
            from aura_core.export.tensorrt_backend import EngineOptions

            options["options"] = EngineOptions(
                fp16=args.fp16, workspace_bytes=args.workspace_mib << 20, opt_num_seg=args.opt_seg,
                max_num_seg=args.max_seg,
            )  # fmt: skip
        # opening the backend checks the export against the checkpoint; tensorrt builds (or finds) its engines
        open_backend(args.backend, model, args.checkpoint, args.device, export_dir=args.out, **options)
        LOG.info("%s backend opens the export in %s", args.backend, args.out)
    except (CheckpointError, ExportError, RuntimeError, ValueError) as error:
        print(f"export failed: {error}", file=sys.stderr)
        return 1
    for name, record in manifest.graphs.items():
        extra = f" + {record.external_data}" if record.external_data else ""
        print(f"{name:16s} {args.out / record.file}{extra}  sha256 {record.sha256[:12]}")
    print(f"manifest: {args.out / 'manifest.json'} (checkpoint sha256 {manifest.checkpoint.sha256[:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
