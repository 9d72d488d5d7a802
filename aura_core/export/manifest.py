"""Export manifests and the fingerprint of the checkpoint an export came from.

Every exported directory (ONNX files, TensorRT engines) records the SHA-256 of each file of the checkpoint it was made
from. Opening it against another checkpoint fails with an error naming the files that differ, so a robot never runs
decoders from one training run with the LLM of another.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

from tqdm import tqdm

from aura_core.model.checkpoint import CONFIG_FILE, TOKENIZER_DIR, WEIGHTS_FILE, CheckpointError, read_metadata
from aura_core.model.config import config_from_dict

LOGGER = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "aura-export"
MANIFEST_VERSION = 1
SAM_WEIGHTS_KEY = "sam:vision.checkpoint"  # fingerprint entry for a SAM .pth the checkpoint's backbone comes from
_CHUNK = 1 << 22
_PROGRESS_BYTES = 256 << 20  # files above this size get a progress bar while hashed


class ExportError(ValueError):
    """An export directory that is incomplete, unreadable or made from another checkpoint."""


def sha256_file(path: Union[str, Path]) -> str:
    """SHA-256 hex digest of one file, with a progress bar for big ones (ViT-H weights are 2.5 GB)."""
    path = Path(path)
    digest = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as handle, tqdm(
        total=size, unit="B", unit_scale=True, desc=f"hash {path.name}", disable=size < _PROGRESS_BYTES, leave=False
    ) as bar:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def combined_sha256(files: Mapping[str, str]) -> str:
    """One digest over {name: digest}, independent of dict order."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{files[name]}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class CheckpointFingerprint:
    """SHA-256 of every file of a checkpoint directory (and of the SAM .pth its config loads the backbone from)."""

    files: Dict[str, str]
    sha256: str

    @staticmethod
    def of(directory: Union[str, Path]) -> "CheckpointFingerprint":
        """Hash a checkpoint directory; a missing config.json, model.safetensors or tokenizer/ is an error naming it."""
        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"checkpoint directory not found: {directory}")
        missing = [
            name
            for name, present in (
                (CONFIG_FILE, (directory / CONFIG_FILE).is_file()),
                (WEIGHTS_FILE, (directory / WEIGHTS_FILE).is_file()),
                (TOKENIZER_DIR + "/", (directory / TOKENIZER_DIR).is_dir()),
            )
            if not present
        ]
        if missing:
            raise CheckpointError(f"checkpoint directory {directory} lacks {', '.join(missing)}")
        meta = read_metadata(directory)
        paths = [directory / CONFIG_FILE, directory / WEIGHTS_FILE]
        paths += sorted(p for p in (directory / TOKENIZER_DIR).rglob("*") if p.is_file())
        files = {p.relative_to(directory).as_posix(): sha256_file(p) for p in paths}
        sam = config_from_dict(meta["config"]).vision.checkpoint
        if sam:  # the backbone weights are not in model.safetensors but in this file
            sam_path = Path(sam) if Path(sam).is_absolute() else directory / sam
            if not sam_path.is_file():
                raise CheckpointError(f"{directory / CONFIG_FILE}: vision.checkpoint {sam_path} not found")
            files[SAM_WEIGHTS_KEY] = sha256_file(sam_path)
        return CheckpointFingerprint(files=files, sha256=combined_sha256(files))

    def to_dict(self) -> Dict[str, Any]:
        return {"sha256": self.sha256, "files": dict(sorted(self.files.items()))}

    @staticmethod
    def from_dict(values: Mapping[str, Any], where: str) -> "CheckpointFingerprint":
        try:
            files = {str(k): str(v) for k, v in values["files"].items()}
            return CheckpointFingerprint(files=files, sha256=str(values["sha256"]))
        except (KeyError, TypeError, AttributeError) as error:
            raise ExportError(f"{where}: malformed 'checkpoint' entry ({error!r})") from error

    def differences(self, other: "CheckpointFingerprint") -> List[str]:
        """Human-readable list of what differs between two fingerprints (empty when they match)."""
        diffs = []
        for name in sorted(set(self.files) | set(other.files)):
            mine, theirs = self.files.get(name), other.files.get(name)
            if mine == theirs:
                continue
            if mine is None:
                diffs.append(f"{name} only in the checkpoint")
            elif theirs is None:
                diffs.append(f"{name} only in the export's source")
            else:
                diffs.append(f"{name} (export made from sha256 {mine[:12]}, checkpoint has {theirs[:12]})")
        return diffs


@dataclass
class GraphRecord:
    """One exported ONNX graph: its file, external data file, digest and I/O description."""

    file: str
    sha256: str  # over the .onnx and its external data, the key TensorRT engines are cached under
    inputs: List[Dict[str, Any]]
    outputs: List[Dict[str, Any]]
    external_data: Optional[str] = None

    def files(self) -> List[str]:
        return [self.file] + ([self.external_data] if self.external_data else [])


@dataclass
class Manifest:
    """manifest.json of an export directory."""

    checkpoint: CheckpointFingerprint
    config_name: str
    opset: int
    exporter: str
    graphs: Dict[str, GraphRecord]
    versions: Dict[str, str] = field(default_factory=dict)
    use_occlusion_condition_encoder: bool = True

    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "checkpoint": self.checkpoint.to_dict(),
            "config_name": self.config_name,
            "use_occlusion_condition_encoder": self.use_occlusion_condition_encoder,
            "opset": self.opset,
            "exporter": self.exporter,
            "versions": dict(self.versions),
            "graphs": {name: vars(record) for name, record in self.graphs.items()},
        }

    def write(self, directory: Union[str, Path]) -> Path:
        path = Path(directory) / MANIFEST_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @staticmethod
    def read(directory: Union[str, Path]) -> "Manifest":
        """Parse manifest.json; a missing or malformed file is an ExportError naming it."""
        path = Path(directory) / MANIFEST_FILE
        if not path.is_file():
            raise ExportError(f"{path} is missing (not an AURA export directory; run training/export.py)")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ExportError(f"{path}: invalid JSON: {error}") from error
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise ExportError(f"{path}: not an AURA export manifest (expected format '{MANIFEST_FORMAT}')")
        if data.get("version") != MANIFEST_VERSION:
            raise ExportError(f"{path}: manifest version {data.get('version')}, this code reads {MANIFEST_VERSION}")
        try:
            graphs = {name: GraphRecord(**record) for name, record in data["graphs"].items()}
            return Manifest(
                checkpoint=CheckpointFingerprint.from_dict(data["checkpoint"], str(path)),
                config_name=str(data["config_name"]),
                opset=int(data["opset"]),
                exporter=str(data["exporter"]),
                graphs=graphs,
                versions=dict(data.get("versions", {})),
                use_occlusion_condition_encoder=bool(data["use_occlusion_condition_encoder"]),
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise ExportError(f"{path}: malformed manifest ({error!r})") from error

    def check_checkpoint(self, fingerprint: CheckpointFingerprint, where: Union[str, Path]) -> None:
        """Raise ExportError naming the differing files when this export was made from another checkpoint."""
        if fingerprint.sha256 == self.checkpoint.sha256:
            return
        diffs = self.checkpoint.differences(fingerprint)
        raise ExportError(
            f"{where} was exported from another checkpoint (sha256 {self.checkpoint.sha256[:12]}, this one "
            f"{fingerprint.sha256[:12]}); differing files: {'; '.join(diffs)}. Re-run training/export.py"
        )

    def check_files(self, directory: Union[str, Path], names: Iterable[str], *, verify_hash: bool = True) -> None:
        """Each named graph is listed, its files exist and (verify_hash) still have the recorded digest."""
        directory = Path(directory)
        for name in names:
            if name not in self.graphs:
                raise ExportError(f"{directory / MANIFEST_FILE} lists no graph '{name}' (has: {', '.join(self.graphs)})")
            record = self.graphs[name]
            for file in record.files():
                if not (directory / file).is_file():
                    raise ExportError(f"{directory / file} is missing (listed in {MANIFEST_FILE} for '{name}')")
            if verify_hash:
                digest = graph_sha256(directory, record.file, record.external_data)
                if digest != record.sha256:
                    raise ExportError(
                        f"{directory / record.file}: contents changed since export (sha256 {digest[:12]}, "
                        f"manifest says {record.sha256[:12]})"
                    )


def graph_sha256(directory: Path, file: str, external_data: Optional[str]) -> str:
    """Digest of one graph: its .onnx plus its external data file, if any."""
    files = {file: sha256_file(directory / file)}
    if external_data:
        files[external_data] = sha256_file(directory / external_data)
    return combined_sha256(files)
