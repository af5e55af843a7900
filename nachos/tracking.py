"""A thin layer over Weights & Biases.

Online when ``WANDB_API_KEY`` is set, offline otherwise (sync later with ``wandb sync
<run_dir>/wandb/offline-run-*``), or disabled. Metric names are grouped by prefix
(``train/``, ``val/<subnet>/exit_k``, ``perf/``, ``search/``) so that W&B's default workspace
reads as a dashboard. Only one process (rank 0) should create an enabled tracker.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from nachos.config import Config, config_to_dict


def resolve_mode(mode: str) -> str:
    if mode == "auto":
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return mode


def wandb_run_id(run_dir: Path, job_type: str, resume: bool) -> str:
    """The W&B run id of a job in ``run_dir``: the one it had when it ``resume``s, so the W&B run goes
    on; a new one when it starts again (W&B would drop the new run's steps below the old run's last)."""
    id_file = run_dir / f".wandb-{job_type}-id"
    run_id = id_file.read_text().strip() if resume and id_file.exists() else uuid.uuid4().hex[:8]
    id_file.write_text(run_id)
    return run_id


class Tracker:
    """Logs metrics, tables and images; every method is a no-op when disabled."""

    def __init__(self, cfg: Config, run_dir: str | Path, job_type: str, enabled: bool = True,
                 resume: bool = True) -> None:
        self.mode = resolve_mode(cfg.wandb.mode) if enabled else "disabled"
        self.run = None
        if self.mode == "disabled":
            return
        import wandb

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(
            project=cfg.wandb.project, entity=cfg.wandb.entity or None, name=f"{cfg.name}-{job_type}",
            group=cfg.name, job_type=job_type, config=config_to_dict(cfg), dir=str(run_dir),
            mode=self.mode, id=wandb_run_id(run_dir, job_type, resume), resume="allow",
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )

    @property
    def enabled(self) -> bool:
        return self.run is not None

    @property
    def run_path(self) -> Path | None:
        """The local folder holding this run's files (offline: the .wandb file to sync)."""
        return Path(self.run.dir).parent if self.run is not None else None

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int | None = None) -> None:
        if self.run is not None:
            import wandb
            self.run.log({key: wandb.Table(columns=columns, data=rows)}, step=step)

    def log_image(self, key: str, path: str | Path, step: int | None = None) -> None:
        if self.run is not None:
            import wandb
            self.run.log({key: wandb.Image(str(path))}, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def _leveldb_records(path: Path) -> list[bytes]:
    """Complete records of a .wandb file: a 7-byte file header, then LevelDB-log blocks of 32 KiB.

    wandb-core appends to the file from its own process, so a reader can catch it mid-write: a
    chunk cut short by the end of the file, and a record whose last chunk is not there yet, are
    left out instead of being handed to the protobuf parser as if whole.
    """
    block, header = 32768, 7
    data = path.read_bytes()
    pos, out, pending = header, [], b""
    while pos + header <= len(data):
        room = block - pos % block
        if room < header:  # the tail of a block too small for a record header is padding
            pos += room
            continue
        length = int.from_bytes(data[pos + 4:pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + header:pos + header + length]
        pos += header + length
        if (kind == 0 and length == 0) or len(chunk) < length:
            break
        pending += chunk
        if kind in (1, 4):  # FULL or LAST closes a record
            out.append(pending)
            pending = b""
    return out


def read_offline_history(run_path: str | Path, wait_s: float = 0.0) -> list[dict[str, Any]]:
    """The logged rows of an offline run, read back from its .wandb file (for tests and reports).

    ``finish()`` can return before wandb-core has flushed the file; ``wait_s`` > 0 re-reads it
    until the run's closing ``exit`` record is there, or that many seconds have passed.
    """
    from wandb.proto import wandb_internal_pb2

    files = sorted(Path(run_path).glob("*.wandb"))
    if not files:
        raise FileNotFoundError(f"no .wandb file under {run_path}")
    deadline = time.monotonic() + wait_s
    while True:
        rows, closed = [], False
        for raw in _leveldb_records(files[0]):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(raw)
            kind = rec.WhichOneof("record_type")
            closed |= kind == "exit"
            if kind == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                             for item in rec.history.item})
        if closed or time.monotonic() >= deadline:
            return rows
        time.sleep(0.2)
