"""How llmops reaches the cluster: directly on a login node, or over the user's own ssh/scp.

Both transports run a command where the Slurm clients are and move a run
directory's small files between this machine and the cluster. Over SSH the
cluster holds the real run directory (the jobs write there) and the local one
is a mirror: :meth:`SshTransport.pull` brings back what changed, appending
only the new bytes of the append-only logs, so `llmops status` and
`llmops logs -f` read local files either way.

SSH is the user's `ssh` and `scp` binaries, so ~/.ssh/config applies: host
aliases, ProxyJump, keys and agent, and ControlMaster, which keeps one
authenticated (MFA) connection open for all the short commands that follow.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath

from llmops import shell
from llmops.errors import UserError
from llmops.runs.rundir import RunDir

# Files the jobs write that the local mirror needs. Logs and metrics only grow; the rest are replaced.
_GROWING = ("stages/*/metrics.jsonl", "stages/*/eval.jsonl", "stages/*/events.jsonl", "slurm/events.log", "logs/*")
_REPLACED = ("stages/*/progress.json", "last_exit.json", "slurm/*.finished", "slurm/*.plan.json", "slurm/*.shards/*")


class LocalTransport:
    """Slurm commands on this machine (a login node); run directories on a filesystem the nodes share."""

    def run(self, argv: list[str], *, timeout: float = 60) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError:
            raise UserError(f"`{argv[0]}` is not installed on this machine, so Slurm cannot be reached from here",
                            "run llmops on the cluster's login node, or set slurm.login to an SSH host "
                            "(and slurm.remote_root) to submit from here") from None
        except subprocess.TimeoutExpired:
            raise UserError(f"`{argv[0]}` did not answer within {timeout:.0f} s (the Slurm controller is busy or "
                            "unreachable)", "try again in a while; `scontrol ping` tells whether the controller "
                            "answers") from None

    def cluster_path(self, run_path: Path) -> str:
        """The run directory as the cluster's nodes see it."""
        return str(run_path.resolve())

    def push(self, run: RunDir, names: list[str]) -> None:
        """Nothing to copy: the run directory is already where the jobs read it."""

    def pull(self, run: RunDir) -> None:
        """Nothing to fetch: the jobs write into the local run directory."""


@dataclass
class SshTransport:
    """Slurm commands on a login node over ssh; run directories under `remote_root` on the cluster."""

    host: str
    remote_root: str
    options: list[str] = field(default_factory=list)

    def run(self, argv: list[str], *, timeout: float = 120) -> subprocess.CompletedProcess:
        # A login shell, so that the site's profile (modules, PATH to the Slurm clients) applies.
        remote = "bash -lc " + shell.quote(shell.join(argv))
        res = self._ssh(remote, timeout=timeout)
        if res.returncode == 255:  # ssh's own failure (connection, authentication), not the command's
            self._check(res, f"run `{argv[0]}` on {self.host}")
        return res

    def cluster_path(self, run_path: Path) -> str:
        """The run directory as the cluster's nodes see it: its namesake under remote_root."""
        return f"{self.remote_root.rstrip('/')}/{run_path.name}"

    def push(self, run: RunDir, names: list[str]) -> None:
        """Copy the named files of the local run directory to the cluster's, creating it."""
        remote = self.cluster_path(run.path)
        made = self._ssh(shell.join(["mkdir", "-p", f"{remote}/logs", f"{remote}/slurm"]))
        self._check(made, f"create {remote} on {self.host}")
        by_folder: dict[str, list[str]] = {}
        for name in names:
            folder = str(Path(name).parent)
            by_folder.setdefault("" if folder == "." else folder, []).append(str(run.path / name))
        for folder, files in sorted(by_folder.items()):
            dest = f"{self.host}:{remote}/{folder}".rstrip("/") + "/"
            copied = _call(["scp", "-q", "-p", *self.options, *files, dest], timeout=300)
            self._check(copied, f"copy {', '.join(Path(f).name for f in files)} to {dest}")

    def pull(self, run: RunDir) -> None:
        """Bring the cluster's logs, events and progress into the local run directory (new bytes only).

        What the cluster sends is untrusted: only files of the known kinds are written, never the run's
        spec.yaml or status.json, and a name that cannot be used is skipped and reported."""
        script = _pull_script(self.cluster_path(run.path), run.path)
        res = _call(["ssh", *self.options, self.host, "--", script], timeout=300, binary=True)
        self._check(res, f"read {self.cluster_path(run.path)} on {self.host}")
        skipped = _apply_frames(run.path, res.stdout)
        if skipped:
            print(f"llmops: skipped {len(skipped)} file(s) on the cluster that are not a run's logs or progress: "
                  + ", ".join(skipped[:5]), file=sys.stderr)

    def _ssh(self, remote_command: str, *, timeout: float = 120) -> subprocess.CompletedProcess:
        return _call(["ssh", *self.options, self.host, "--", remote_command], timeout=timeout)

    def _check(self, res: subprocess.CompletedProcess, what: str) -> None:
        if res.returncode != 0:
            err = res.stderr.decode(errors="replace") if isinstance(res.stderr, bytes) else res.stderr
            detail = err.strip().splitlines()[-3:]
            raise UserError(f"could not {what}: {' '.join(detail) or f'exit code {res.returncode}'}",
                            f"check that `ssh {self.host}` works from this machine (host name, keys, "
                            "ProxyJump in ~/.ssh/config) and that slurm.remote_root is writable on the cluster")


def _call(argv: list[str], *, timeout: float, binary: bool = False) -> subprocess.CompletedProcess:
    """Run ssh or scp; `binary` keeps stdout as bytes (frame lengths count bytes, not characters)."""
    try:
        return subprocess.run(argv, check=False, capture_output=True, text=not binary, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise UserError(f"`{argv[0]}` is not installed on this machine",
                        "install the OpenSSH client, or run llmops on the cluster's login node") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"`{argv[0]}` did not finish within {timeout:.0f} s",
                        "check the connection to the login node (an MFA prompt needs a ControlMaster "
                        "connection opened beforehand: ssh -fN <host>)") from None


def _pull_script(remote: str, local: Path) -> str:
    """A POSIX sh script that prints each changed file as a frame: `<name>\\0<offset>\\0<length>\\0<bytes>`.

    NUL is the one byte no file name can hold, so no name can forge a frame."""
    sizes = []
    for pattern in _GROWING:
        for path in sorted(local.glob(pattern)):
            if path.is_file():
                sizes.append(f"{shell.quote(str(path.relative_to(local)))}) off={path.stat().st_size} ;;")
    known = "\n".join(sizes)
    growing = " ".join(_GROWING)
    replaced = " ".join(_REPLACED)
    return f"""cd {shell.quote(remote)} || exit 3
for f in {growing}; do
    [ -f "$f" ] || continue
    off=0
    case "$f" in
{known}
    esac
    size=$(( $(wc -c < "$f") ))
    [ "$size" -ge "$off" ] || off=0
    n=$(( size - off ))
    [ "$n" -gt 0 ] || continue
    printf '%s\\0%s\\0%s\\0' "$f" "$off" "$n"
    tail -c +$(( off + 1 )) "$f" | head -c "$n"
done
for f in {replaced}; do
    [ -f "$f" ] || continue
    n=$(( $(wc -c < "$f") ))
    printf '%s\\0%s\\0%s\\0' "$f" 0 "$n"
    head -c "$n" "$f"
done
"""


def _wanted(name: str) -> bool:
    """Whether a name the cluster sent is a file the mirror takes: relative, no `..`, no control characters,
    and of one of the known kinds (each pattern matched part by part)."""
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or ".." in parts or any(ord(c) < 32 or c == "\x7f" for c in name):
        return False
    return any(len(p := PurePosixPath(pattern).parts) == len(parts) and all(map(fnmatchcase, parts, p))
               for pattern in _GROWING + _REPLACED)


def _apply_frames(root: Path, data: bytes) -> list[str]:
    """Write the frames of :func:`_pull_script` into the local mirror; returns what was skipped, and why."""
    skipped: list[str] = []
    pos = 0
    while pos < len(data):
        fields = data[pos:pos + 4200].split(b"\0", 3)  # name (at most PATH_MAX), offset, length, body
        try:
            raw, offset, length = fields[0], int(fields[1]), int(fields[2])
        except (IndexError, ValueError):
            skipped.append(f"(unreadable data at byte {pos})")
            break
        start = pos + len(raw) + len(fields[1]) + len(fields[2]) + 3
        body, pos = data[start:start + length], start + length
        try:
            name = raw.decode()
        except UnicodeDecodeError:
            skipped.append(f"{raw!r} (not UTF-8)")
            continue
        if not _wanted(name):
            skipped.append(repr(name))
            continue
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "r+b" if target.exists() else "wb") as f:
            f.seek(offset)
            f.write(body)
            f.truncate()
    return skipped
