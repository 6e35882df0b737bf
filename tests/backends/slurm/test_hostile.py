"""Hostile and careless specs against the Slurm backend: nothing they hold ever runs as a command.

Every field that reaches a rendered script gets every payload below. Each case either is refused (exit 2,
naming the field) or renders scripts that are then executed, for real, with stand-ins for srun, sbatch,
scontrol and scancel on PATH: the payload's marker file must never appear, and every `#SBATCH` line must
stay in the header, where sbatch reads it.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from llmops import runner
from llmops.backends.slurm import fanout
from llmops.backends.slurm.spec import SlurmSpec
from llmops.errors import SpecError
from llmops.runs.rundir import RunDir
from llmops.spec.load import parse_spec
from llmops_testing import tiny_spec

PAYLOADS = [
    "x\ntouch {m}",
    "$(touch {m})",
    "`touch {m}`",
    "x;touch {m}",
    "x' ; touch {m} ; '",
    'x" ; touch {m} ; "',
    "x\\\ntouch {m}",
    "x\r\ntouch {m}",
    "-x --wrap='touch {m}'",
]


def _set(section: dict, field: str, payload: str) -> None:
    """Put the payload where a user would write it."""
    if field == "env.value":
        section["env"] = {"SAFE": payload}
    elif field == "env.key":
        section["env"] = {payload: "1"}
    elif field == "env.BASH_ENV":  # quoted as any value, but bash expands it, $(...) included, and runs the file
        section["env"] = {"BASH_ENV": payload}
    elif field.startswith("container."):
        section["container"] = {"image": "img:1", **{field.split(".")[1]: payload}}
        if field == "container.mounts":
            section["container"]["mounts"] = [f"/data:{payload}"]
    elif field == "sbatch_args":
        section["sbatch_args"] = [f"--comment={payload}"]
    elif field == "remote_root":
        section.update(login="login-node", remote_root=payload)
    else:
        section[field] = payload


FIELDS = ["partition", "account", "qos", "constraint", "gpu_type", "mem", "time", "python", "env.value", "env.key",
          "env.BASH_ENV",
          "container.image", "container.mounts", "container.workdir", "sbatch_args", "login", "remote_root"]


@pytest.fixture(scope="module")
def stubs(tmp_path_factory) -> Path:
    """srun runs its command (skipping its own options) as a real one would; the others answer like Slurm."""
    folder = tmp_path_factory.mktemp("stubs")
    scripts = {
        "srun": '#!/bin/bash\nwhile [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done\nexport SLURM_NODEID=0\n'
                '"$@"\n',
        "scontrol": "#!/bin/sh\necho node1\n",
        "scancel": "#!/bin/sh\nexit 0\n",
        "sbatch": "#!/bin/sh\necho 42\n",
        "fakepython": "#!/bin/sh\nexit 0\n",
    }
    for name, text in scripts.items():
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return folder


def _header_holds_every_directive(script: str) -> bool:
    lines = script.splitlines()
    first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    return all(not line.startswith("#SBATCH") for line in lines[first_command:])


def _execute(folder: Path, name: str, stubs: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "SLURM_JOB_ID": "7",
           "SLURM_JOB_NODELIST": "node1", "SLURM_CPUS_ON_NODE": "2", "HOME": str(tmp_path)}
    subprocess.run(["bash", str(folder / name)], cwd=folder, env=env, capture_output=True, timeout=60,
                   stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("field", FIELDS)
def test_no_field_smuggles_a_command_into_the_scripts(field, stubs, tmp_path):
    marker = tmp_path / "PWNED"
    refused = 0
    for i, payload in enumerate(PAYLOADS):
        section = {"python": str(stubs / "fakepython")}
        _set(section, field, payload.format(m=marker))
        if field == "remote_root":
            section["remote_root"] = str(tmp_path / "remote") + section["remote_root"]
        spec = {**tiny_spec("hostile"), "backend": "slurm", "slurm": section}
        if field.startswith(("gpu_type", "container")):
            spec["resources"] = {"gpus_per_node": 1}
        out = tmp_path / f"hostile-{i}"
        try:
            request = runner.plan(parse_spec(spec), path=out)
        except SpecError as exc:
            refused += 1
            assert field.split(".")[0] in exc.render() or "runs directory" in exc.render()
            continue
        runner.render(request)
        (out / "logs").mkdir(exist_ok=True)
        script = (out / "slurm" / "pretrain.sbatch").read_text()
        assert _header_holds_every_directive(script), f"{field}: an #SBATCH line escaped the header"
        _execute(out, "slurm/pretrain.sbatch", stubs, tmp_path)
        _execute(out, "slurm/submit.sh", stubs, tmp_path)
        assert not marker.exists(), f"{field} = {payload!r} ran a command"
    if field != "env.value":  # any text, quoted where it is used (a certificate may hold newlines)
        assert refused, f"{field}: no payload was refused; it takes any text"


def test_a_newline_in_a_name_is_refused_with_the_field_and_the_fix():
    spec = {**tiny_spec("hostile"), "backend": "slurm", "slurm": {"partition": "gpu\n#SBATCH --wrap=x"}}
    with pytest.raises(SpecError) as info:
        parse_spec(spec)
    text = info.value.render()
    assert "slurm.partition" in text and "not a name the scheduler accepts" in text


def test_the_submitit_fanout_gets_only_validated_names(tmp_path):
    """Data preparation's job arrays: submitit writes its own #SBATCH lines from the same settings."""
    import submitit.slurm.slurm as submitit_slurm

    spec = parse_spec({**tiny_spec("fan"), "backend": "slurm",
                       "slurm": {"partition": "cpu,debug", "account": "team.a", "env": {"HF_HOME": "/x y/$(z)"},
                                 "qos": "high", "constraint": "[rack1|rack2]*2"}})
    run = RunDir.create(spec, tmp_path / "fan-1")
    ex = fanout.executor(spec, spec.slurm, run, python="python3")
    text = submitit_slurm._make_sbatch_string(command="true", folder=str(tmp_path), **ex.parameters)
    assert _header_holds_every_directive(text)
    assert "export HF_HOME='/x y/$(z)'" in text
    for bad in ({"env": {"A B": "1"}}, {"qos": "a b"}, {"account": "$(id)"}):
        with pytest.raises(ValueError):
            SlurmSpec.model_validate(bad)


def test_the_scripts_are_executable_as_rendered(tmp_path, stubs):
    """The same harness runs a clean spec end to end: srun's command starts the launcher (a stand-in)."""
    spec = {**tiny_spec("clean"), "backend": "slurm", "slurm": {"python": str(stubs / "fakepython")}}
    out = tmp_path / "clean-1"
    runner.render(runner.plan(parse_spec(spec), path=out))
    (out / "logs").mkdir(exist_ok=True)
    _execute(out, "slurm/pretrain.sbatch", stubs, tmp_path)
    assert (out / "slurm" / "pretrain.finished").exists()
    assert stat.S_IMODE((out / "slurm" / "submit.sh").stat().st_mode) & 0o100


def test_setup_lines_are_shell_by_design_and_the_harness_sees_them_run(tmp_path, stubs):
    """The positive control: what the harness executes does run (slurm.setup is a shell line on purpose)."""
    marker = tmp_path / "RAN"
    spec = {**tiny_spec("setup"), "backend": "slurm",
            "slurm": {"python": str(stubs / "fakepython"), "setup": [f"touch {marker}"]}}
    out = tmp_path / "setup-1"
    runner.render(runner.plan(parse_spec(spec), path=out))
    (out / "logs").mkdir(exist_ok=True)
    _execute(out, "slurm/pretrain.sbatch", stubs, tmp_path)
    assert marker.exists()


def test_strict_mode_refuses_the_fields_that_run_commands_by_design(tmp_path):
    from llmops_testing import llmops, write_spec

    spec = {**tiny_spec("strict"), "backend": "slurm",
            "slurm": {"setup": ["curl x | sh"], "ssh_options": ["-o", "ProxyCommand=sh -c id"],
                      "env": {"LD_PRELOAD": "/shared/x.so", "PYTHONPATH": "/shared/py", "NCCL_DEBUG": "INFO"}}}
    path = write_spec(tmp_path / "s.yaml", spec)
    assert llmops("validate", str(path)).returncode == 0  # shell by design, allowed by default
    for args, env in ((["--strict"], {}), ([], {"LLMOPS_STRICT": "1"})):
        res = llmops(*args, "validate", str(path), env=env)
        assert res.returncode == 2 and "slurm.setup" in res.stderr and "slurm.ssh_options" in res.stderr
        # variables that choose the code the nodes load, too; others are data
        assert "slurm.env.LD_PRELOAD" in res.stderr and "slurm.env.PYTHONPATH" in res.stderr
        assert "NCCL_DEBUG" not in res.stderr
    # A cluster profile can make it the cluster's rule; its own setup lines are the platform team's and stand.
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "ci.yaml").write_text("strict: true\nslurm: {defaults: {setup: [module load cuda]}}\n")
    clean = write_spec(tmp_path / "clean.yaml", {**tiny_spec("strict"), "backend": "slurm", "profile": "ci"})
    assert llmops("validate", str(clean), env={"LLMOPS_PROFILE_PATH": str(profiles)}).returncode == 0
    spec["profile"] = "ci"
    res = llmops("validate", str(write_spec(tmp_path / "p.yaml", spec)), env={"LLMOPS_PROFILE_PATH": str(profiles)})
    assert res.returncode == 2 and "strict mode" in res.stderr


def test_env_cannot_take_over_the_batch_scripts_own_variables():
    """`env` is exported after the script has set its own variables: MAX_RESTARTS would lift the restart limit,
    SLURM_RESTART_COUNT reset the requeue count, LOG send the logs elsewhere. Every variable a rendered script
    assigns (the golden files) is one `env` may not name."""
    import re

    from llmops.backends.slurm.spec import SCRIPT_VARIABLES

    golden = Path(__file__).parent / "golden"
    scripts = [f.read_text() for f in golden.glob("*.sbatch")]
    assigned = {m.group(1) for text in scripts for m in re.finditer(r"^\s*([A-Z_][A-Z0-9_]*)=", text, re.M)}
    # and what it exports for llmops's launcher and workers (its other exports are defaults `env` may change)
    assigned |= {m.group(1) for text in scripts for m in re.finditer(r"\b(LLMOPS_[A-Z_]+)=", text)}
    assert assigned and assigned <= SCRIPT_VARIABLES, assigned - SCRIPT_VARIABLES
    for key in ("MAX_RESTARTS", "LOG", "SLURM_RESTART_COUNT", "LLMOPS_STANDBY"):
        spec = {**tiny_spec("hostile"), "backend": "slurm", "slurm": {"env": {key: "0"}}}
        with pytest.raises(SpecError) as info:
            parse_spec(spec)
        assert f"{key} is set by the batch script itself" in info.value.render(), key
    parse_spec({**tiny_spec("fine"), "backend": "slurm",
                "slurm": {"env": {"NCCL_DEBUG": "INFO", "LOGLEVEL": "1", "LLMOPS_WARM_START": "0"}}})


def test_a_stage_that_ends_while_its_notice_is_handled_keeps_its_own_exit_code(tmp_path, stubs):
    """The time-limit notice comes as the training ends: srun exits 0 while the script's trap still runs.
    The script must take srun's 0 (finished), not the code of the signal that cut its `wait` short (138,
    which read as "checkpointed before the time limit" and requeued a finished stage)."""
    import shutil

    racing = tmp_path / "racing-stubs"
    shutil.copytree(stubs, racing)
    (racing / "srun").write_text("#!/bin/bash\nkill -USR1 $PPID\nsleep 0.2\nexit 0\n")  # the notice, then done
    (racing / "scancel").write_text("#!/bin/sh\nsleep 1\n")  # the trap passes the notice on: srun ends meanwhile
    spec = {**tiny_spec("race"), "backend": "slurm", "slurm": {"python": str(stubs / "fakepython")}}
    out = tmp_path / "race-1"
    runner.render(runner.plan(parse_spec(spec), path=out))
    (out / "logs").mkdir(exist_ok=True)
    _execute(out, "slurm/pretrain.sbatch", racing, tmp_path)
    events = (out / "slurm" / "events.log").read_text()
    assert "notice signal=USR1" in events  # the race did happen
    assert (out / "slurm" / "pretrain.finished").exists(), events
    assert "finished code=0" in events and "requeue" not in events, events


def test_a_resubmission_numbers_its_attempts_after_the_highest_log(tmp_path, stubs):
    """Log numbers count on from the highest, not the number of logs: a gap (an attempt that left no log, a log
    removed by hand) must not make a new attempt append to an earlier one's log."""
    import shutil

    recording = tmp_path / "recording-stubs"
    shutil.copytree(stubs, recording)
    (recording / "sbatch").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "sbatch.args"}\necho 42\n')
    spec = {**tiny_spec("numbers"), "backend": "slurm", "slurm": {"python": str(stubs / "fakepython")}}
    out = tmp_path / "numbers-1"
    runner.render(runner.plan(parse_spec(spec), path=out))
    (out / "logs").mkdir(exist_ok=True)
    for n in (0, 2):
        (out / "logs" / f"pretrain.restart-{n}.log").write_text("an earlier attempt\n")
    _execute(out, "slurm/submit.sh", recording, tmp_path)
    assert "LLMOPS_RESTART_BASE=3" in (tmp_path / "sbatch.args").read_text()
    for log in (out / "logs").iterdir():
        log.unlink()
    (tmp_path / "sbatch.args").unlink()
    _execute(out, "slurm/submit.sh", recording, tmp_path)
    assert "LLMOPS_RESTART_BASE=0" in (tmp_path / "sbatch.args").read_text()
