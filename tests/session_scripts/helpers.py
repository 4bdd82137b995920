"""Helpers for the session tests: write a real script, run it in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

from archive_tool.names import is_session_name


def write_script(tmp_path: Path, body: str, name: str = "exp.py") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return p


def run_script(script: Path, *args: str, env: dict[str, str] | None = None,
               cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "SCITEX_SESSION_OUT_DIR"}
    full_env["PYTHONDONTWRITEBYTECODE"] = "1"
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True,
        cwd=cwd or script.parent, env=full_env, timeout=timeout,
    )


def only_session(state_dir: Path) -> Path:
    """The single session dir (or archive) under *state_dir*."""
    children = sorted(state_dir.iterdir())
    assert len(children) == 1, children
    return children[0]


def states(out_dir: Path) -> dict[str, list[str]]:
    """{state: [names]} for every non-empty state dir under a ``<stem>_out`` dir."""
    return {d.name: sorted(c.name for c in d.iterdir())
            for d in sorted(out_dir.iterdir()) if d.is_dir() and any(d.iterdir())}


def load_config(session_dir: Path) -> dict:
    return yaml.safe_load((session_dir / "CONFIGS" / "CONFIG.yaml").read_text())


def assert_session_tree(session_dir: Path) -> None:
    assert is_session_name(session_dir.name), session_dir.name
    for rel in ("CONFIGS/CONFIG.yaml", "CONFIGS/CONFIG.pkl", "logs/stdout.log",
                "logs/stderr.log"):
        assert (session_dir / rel).is_file(), rel
