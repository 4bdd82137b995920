"""Undirected races: a hostile user process swaps paths in its tree for symlinks to a
root-only dir, as fast as it can, while a root sweep runs over the tree. Whatever
interleaving happens, nothing outside the tree may be read, written, linked or deleted,
and no archive may hold the root-only files.

One short trial runs in the default suite; ``scripts/stress`` runs many
(STRESS_TRIALS, -m stress).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from archive_tool.engine.read import list_members
from tests.conftest import SID, make_session, snapshot
from tests.reliability import record
from tests.test_security_races import USER, chown_tree

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="plays root against a user: needs root and setpriv")

# The attacker: every swap the deterministic tests play one at a time, in a loop.
ATTACKER = r"""
import os, random, sys, time
fin, secret, stop = sys.argv[1], sys.argv[2], sys.argv[3]
rnd = random.Random(int(sys.argv[4]))
swaps = 0
def swap(path, target):
    global swaps
    aside = path + ".aside"
    try:
        os.rename(path, aside)
        os.symlink(target, path)
        swaps += 1
        time.sleep(rnd.random() * 0.002)
        os.unlink(path)
        os.rename(aside, path)
    except OSError:
        pass
while not os.path.exists(stop):
    try:
        names = os.listdir(fin)
    except OSError:
        names = []
    for n in rnd.sample(names, min(len(names), 8)):
        p = os.path.join(fin, n)
        if n.startswith(".") and n.endswith(".deleting"):
            swap(os.path.join(p, "logs"), os.path.join(secret, "sub"))
        elif n.endswith(".tar.zst"):
            continue
        else:
            swap(os.path.join(p, "logs"), os.path.join(secret, "sub"))
            swap(p, secret)
    swap(fin, secret)
print(swaps)
"""


def _trial(base: Path, n_sessions: int, seed: int) -> dict:
    root = base / "runs"
    fin = root / "alice" / "proj_out" / "FINISHED_SUCCESS"
    for k in range(n_sessions):
        make_session(fin, f"{SID[:-4]}{k:04d}-main")
    chown_tree(root / "alice")
    secret = base / "rootonly"
    secret.mkdir(mode=0o700)
    (secret / "shadow").write_text("root:$6$secret\n")
    (secret / "sub").mkdir()
    (secret / "sub" / "stdout.log").write_text("must survive\n")
    (secret / "sub" / "keep.txt").write_text("must survive\n")
    before = snapshot(secret)
    stop = base / "stop"
    attacker = subprocess.Popen(
        ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", sys.executable,
         "-c", ATTACKER, str(fin), str(secret), str(stop), str(seed)],
        stdout=subprocess.PIPE, text=True)
    time.sleep(0.05)
    sweeps = 0
    try:
        for _ in range(3):  # later sweeps finish what the attacker's swaps interrupted
            subprocess.run([sys.executable, "-m", "archive_tool", "sweep", str(root), "--execute",
                            "--workers", "2", "--format", "tar.zst"],
                           capture_output=True, timeout=300, cwd=Path(__file__).parents[1])
            sweeps += 1
    finally:
        stop.touch()
        os.chown(stop, USER, USER)
        swaps = int(attacker.communicate(timeout=60)[0].strip() or 0)
    escapes = 0 if snapshot(secret) == before else 1
    for a in root.rglob("*.tar.zst"):
        escapes += sum(m.name.endswith(("shadow", "keep.txt")) for m in list_members(a))
    return {"sessions": n_sessions, "swaps": swaps, "sweeps": sweeps, "escapes": escapes}


def _run(trials: int, n_sessions: int) -> dict:
    total = {"trials": 0, "sessions": 0, "swaps": 0, "escapes": 0}
    for t in range(trials):
        base = Path(tempfile.mkdtemp(prefix="raceloop-", dir="/tmp"))
        os.chmod(base, 0o755)
        try:
            r = _trial(base, n_sessions, seed=t)
        finally:
            shutil.rmtree(base, ignore_errors=True)
        total["trials"] += 1
        total["sessions"] += r["sessions"]
        total["swaps"] += r["swaps"]
        total["escapes"] += r["escapes"]
        assert r["escapes"] == 0, (t, r)
    return total


@pytest.mark.timeout(300)
def test_hostile_user_swapping_paths_during_a_root_sweep_reaches_nothing(tmp_path: Path) -> None:
    total = _run(1, 40)
    assert total["swaps"] > 0, total  # the attacker really raced the sweep


@pytest.mark.stress
@pytest.mark.timeout(0)
def test_race_loop_many_trials() -> None:
    trials = int(os.environ.get("STRESS_TRIALS", "300")) // 10 or 1
    total = _run(trials, 150)
    record("hostile-user race loop (root sweep vs path swaps)", total)
    assert total["escapes"] == 0
