"""The run folder and every file tunesmith writes: the only package that writes into a run folder.

- `folder`: the layout (`RunFolder`), creating a run folder, and removing or marking it on failure;
- `record`: tunesmith.json, the typed run record beside the weights (`RunRecord`, `weights_folder`);
- `manifest`: manifest.json, the seal of a run and of each checkpoint (one format);
- `atomic`: writing a file or a folder whole or not at all;
- `disk`: a full disk, found before writing where the size is known, and told in one line.

Stages that fill a folder with a library's own writer (`save_pretrained`, safetensors, llama.cpp's
quantizer) do it inside `atomic_folder` / `atomic_file`, which name, rename and clean up."""

from tunesmith.runfolder.atomic import (
    AtomicFiles,
    append_jsonl,
    appending,
    atomic_file,
    atomic_folder,
    discard,
    jsonl,
    move_aside,
    sha256_file,
    write_bytes,
    write_json,
    write_jsonl,
    write_text,
)
from tunesmith.runfolder.disk import (
    SPACE_RESERVE,
    disk_full,
    ensure_space,
    free_space,
    human_size,
    is_disk_full,
    mount_point,
    tree_size,
)
from tunesmith.runfolder.folder import RunFolder, create_run_dir, run_folder_guard
from tunesmith.runfolder.manifest import (
    MANIFEST,
    artifact_hashes,
    read_manifest,
    reseal_manifest,
    seal_checkpoint,
    versions,
    write_manifest,
)
from tunesmith.runfolder.record import RUN_META, RunRecord, is_finished_run, read_record, weights_folder

__all__ = [
    "MANIFEST",
    "RUN_META",
    "SPACE_RESERVE",
    "AtomicFiles",
    "RunFolder",
    "RunRecord",
    "append_jsonl",
    "appending",
    "artifact_hashes",
    "atomic_file",
    "atomic_folder",
    "create_run_dir",
    "discard",
    "disk_full",
    "ensure_space",
    "free_space",
    "human_size",
    "is_disk_full",
    "is_finished_run",
    "jsonl",
    "mount_point",
    "move_aside",
    "read_manifest",
    "read_record",
    "reseal_manifest",
    "run_folder_guard",
    "seal_checkpoint",
    "sha256_file",
    "tree_size",
    "versions",
    "weights_folder",
    "write_bytes",
    "write_json",
    "write_jsonl",
    "write_manifest",
    "write_text",
]
