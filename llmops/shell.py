"""The one place where spec values meet a shell: what they may look like, and how they are quoted.

Rendered scripts run on clusters under the submitter's account, and specs are
shared, generated and copied: a value must never end a line, start a command
or escape its quotes. Two rules cover every value that reaches a script:

* a value that names something the scheduler knows (a partition, an account,
  a feature expression, an environment key) or a path written into a line that
  cannot be quoted (``#SBATCH --chdir=...``) is **validated** here, and refused
  with exit 2 when it holds anything outside what the scheduler accepts;
* every other value is **quoted** by :func:`quote` (or :func:`join`), never
  pasted between quotes by hand, and never into a command string that a
  second shell parses again (``bash -c "..."``): values reach an inner shell
  as its positional arguments.

Fields that are shell by design (``slurm.setup`` lines, ``slurm.ssh_options``)
are the documented exception; ``--strict`` refuses them (docs/trust-model.md).
"""

from __future__ import annotations

import posixpath
import re
import shlex

# Slurm's names of partitions, accounts, QOS, GPU types, reservations: no spaces, no shell metacharacters.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+@-]*")
# A node feature expression (--constraint): features joined by & | , with counts (*N), brackets and parentheses.
_FEATURES = re.compile(r"[A-Za-z0-9_.+\-&|,*\[\]()!:]+")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Paths in lines that cannot be quoted (#SBATCH) or that sbatch rewrites (% patterns in --output).
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9_./+@=,~-]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_text(value: str, what: str) -> str:
    """A value that is quoted where it is used: it may hold anything but control characters (newlines)."""
    if _CONTROL.search(value):
        raise ValueError(f"{what} {value!r} holds a control character (a newline, tab or NUL): remove it")
    return value


def check_name(value: str, what: str, *, several: bool = False) -> str:
    """A scheduler name (letters, digits, `_ . + @ -`), or several separated by commas."""
    parts = value.split(",") if several else [value]
    if not all(_NAME.fullmatch(p) for p in parts):
        allowed = "letters, digits and _ . + @ -" + ("; several separated by commas" if several else "")
        raise ValueError(f"{what} {value!r} is not a name the scheduler accepts ({allowed})")
    return value


def check_features(value: str, what: str) -> str:
    """A node feature expression, e.g. `h100&ib` or `[rack1|rack2]*2`."""
    if not _FEATURES.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not a feature expression (features joined by & | , with "
                         f"counts *N and brackets; no spaces)")
    return value


# Variables through which a shell runs what they hold: bash reads the file BASH_ENV names (sh: ENV) after
# expanding it, command substitution included, before a non-interactive script's first line; PS4 is expanded for
# every traced line, PROMPT_COMMAND run, SHELLOPTS/BASHOPTS turn such options on, IFS and GLOBIGNORE change how
# the script's own lines split and expand. A value is quoted where it is exported, but under these names it is code.
SHELL_HOOKS = frozenset({"BASH_ENV", "ENV", "PS4", "PROMPT_COMMAND", "SHELLOPTS", "BASHOPTS", "IFS", "GLOBIGNORE",
                         "CDPATH"})
# Variables that choose the code a program loads: the dynamic linker's and Python's search paths and start-up
# hooks, and PATH. Sites set some of them on purpose (a library folder for NCCL's network plugin), so a spec may;
# strict mode refuses them in a spec, as it refuses slurm.python (the cluster profile's own env stands).
CODE_PATHS = frozenset({"LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP",
                        "PYTHONUSERBASE", "PYTHONBREAKPOINT", "PATH"})


def check_env_key(key: str, what: str = "environment variable") -> str:
    """An environment variable's name: a shell identifier, and none of :data:`SHELL_HOOKS`."""
    if not _ENV_KEY.fullmatch(key):
        raise ValueError(f"{what} {key!r} is not a variable name (letters, digits and _, not starting with a digit)")
    if key in SHELL_HOOKS:
        raise ValueError(f"{what} {key} makes the scripts' shell run or reinterpret what it holds (bash expands "
                         f"BASH_ENV and runs the file it names, PS4 for every traced line, ...); set the "
                         f"environment in slurm.setup or the cluster profile instead, where it is shell on purpose")
    return key


def check_absolute(path: str, what: str) -> str:
    """An absolute, normalised path (no `..`, no `//`, no control characters); returned without a trailing /."""
    check_text(path, what)
    if not path.startswith("/"):
        raise ValueError(f"{what} {path!r} is not an absolute path")
    normal = "/" + posixpath.normpath(path).lstrip("/")
    if normal != path.rstrip("/") and path != "/":
        raise ValueError(f"{what} {path!r} is not a normalised path (write {normal!r})")
    return normal


def plain_path(path: str) -> bool:
    """Whether an absolute path can be written into an `#SBATCH` line as it is (no spaces, quotes or %)."""
    return bool(_PLAIN_PATH.fullmatch(path)) and ".." not in path.split("/")


def quote(value: object) -> str:
    """The value as one shell word. Values with `=` or `,` (NCCL's `=mlx5_0,...`) are quoted too, so they read
    unambiguously."""
    text = str(value)
    quoted = shlex.quote(text)
    return quoted if quoted != text or not any(c in text for c in "=,") else f"'{text}'"


def join(argv: list[str]) -> str:
    """A command line whose every argument is one shell word."""
    return " ".join(quote(a) for a in argv)
