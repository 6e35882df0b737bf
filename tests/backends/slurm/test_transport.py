"""What comes back from the cluster is untrusted: its file names can neither forge a frame nor reach spec.yaml.

The pull script runs here with `sh`, in a folder standing in for the cluster's run directory, exactly as
ssh runs it there; its output goes through the same decoder `llmops status` uses.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from llmops.backends.slurm.transport import _apply_frames, _pull_script


def _pull(remote: Path, local: Path) -> list[str]:
    out = subprocess.run(["sh", "-c", _pull_script(str(remote), local)], capture_output=True, check=True)
    return _apply_frames(local, out.stdout)


def test_a_file_name_cannot_forge_a_frame_or_rewrite_the_spec(tmp_path):
    remote, local = tmp_path / "cluster", tmp_path / "laptop"
    (remote / "logs").mkdir(parents=True)
    (local / "logs").mkdir(parents=True)
    (local / "spec.yaml").write_text("name: mine\n")
    (local / "status.json").write_text("{}")
    (remote / "logs" / "pretrain.restart-0.log").write_text("[step 1/4] loss=6.2\n")
    # The old frames were `<name> <offset> <length>\n`: this name forged one that replaced spec.yaml.
    forged = "x 0 1\nAspec.yaml 0 13\nname: theirs"
    (remote / "logs" / forged).write_text("y" * 80)
    (remote / "spec.yaml").write_text("name: theirs\n")
    (remote / "status.json").write_text('{"state": "SUCCEEDED"}')
    os.mkdir(remote / "logs" / "sub")
    skipped = _pull(remote, local)
    assert (local / "logs" / "pretrain.restart-0.log").read_text() == "[step 1/4] loss=6.2\n"
    assert (local / "spec.yaml").read_text() == "name: mine\n" and (local / "status.json").read_text() == "{}"
    assert sorted(p.name for p in (local / "logs").iterdir()) == ["pretrain.restart-0.log"]
    assert any("spec.yaml" in s for s in skipped)


def test_a_name_that_is_not_utf8_is_skipped_and_reported(tmp_path):
    remote, local = tmp_path / "cluster", tmp_path / "laptop"
    (remote / "logs").mkdir(parents=True)
    local.mkdir()
    with open(os.path.join(os.fsencode(remote / "logs"), b"bad-\xff.log"), "w") as f:
        f.write("x\n")
    (remote / "logs" / "good.restart-0.log").write_text("ok\n")
    skipped = _pull(remote, local)
    assert (local / "logs" / "good.restart-0.log").read_text() == "ok\n"
    assert skipped == ["b'logs/bad-\\xff.log' (not UTF-8)"]


def test_frames_a_hostile_cluster_writes_itself_are_refused(tmp_path):
    (tmp_path / "spec.yaml").write_text("name: mine\n")
    frames = b"".join([b"spec.yaml\x000\x005\x00name:", b"logs/../status.json\x000\x002\x00{}",
                       b"/etc/passwd\x000\x001\x00x", b"logs/ok.log\x000\x003\x00yes", b"garbage"])
    skipped = _apply_frames(tmp_path, frames)
    assert (tmp_path / "spec.yaml").read_text() == "name: mine\n" and not (tmp_path / "status.json").exists()
    assert (tmp_path / "logs" / "ok.log").read_text() == "yes"
    assert len(skipped) == 4 and skipped[-1].startswith("(unreadable data")
