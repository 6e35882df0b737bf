"""The CLI as a user meets it: exit codes, messages, no torch in the control plane."""

from __future__ import annotations

import json
import subprocess
import sys

from llmops_testing import REPO, llmops, tiny_spec, write_spec


def test_control_plane_never_imports_torch_or_megatron():
    # Block the heavy packages outright: validating and rendering must still work.
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['megatron'] = None\n"
        "sys.argv = ['llmops', 'validate', 'examples/tiny-cpu.yaml']\n"
        "from llmops.cli import main; main()\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "TP=2 PP=2" in res.stdout


def test_help_lists_commands():
    res = llmops("--help")
    assert res.returncode == 0
    for command in ("validate", "schema", "run", "submit", "render", "status", "logs", "cancel", "resume"):
        assert command in res.stdout


def test_option_help_keeps_its_defaults():
    # Rich reads "[...]" in help text as markup and drops it: defaults and env vars must survive.
    res = llmops("logs", "--help", env={"COLUMNS": "200"})
    assert res.returncode == 0
    assert "LLMOPS_RUNS_DIR" in res.stdout and "default: ./runs" in res.stdout
    assert "default: the stage running now" in res.stdout


def test_messages_print_their_brackets_as_written(tmp_path):
    # A run's message often quotes torchrun ("[rank0]: ..."); rich must neither drop it nor fail on "[/...]".
    from llmops.runs.rundir import RunDir, Status
    from llmops.spec.load import parse_spec

    run = RunDir.create(parse_spec(tiny_spec("brackets")), tmp_path / "brackets-1")
    message = "[rank0]: RuntimeError: boom [/tmp/x] [red]"
    run.write_status(Status(state="FAILED", message=message, exit_code=1))
    res = llmops("cancel", str(run.path))
    assert res.returncode == 0, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr


def test_bad_spec_exits_2_with_one_paragraph_per_problem(tmp_path):
    spec = tiny_spec("bad", tp=2, pp=2, procs=3)
    spec["train"]["global_batch_size"] = 7
    res = llmops("validate", str(write_spec(tmp_path / "bad.yaml", spec)))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "parallelism" in res.stderr and "does not divide the world size 3" in res.stderr
    assert "Fix:" in res.stderr


def test_missing_spec_file_exits_2(tmp_path):
    res = llmops("run", str(tmp_path / "absent.yaml"), "--runs-dir", str(tmp_path))
    assert res.returncode == 2
    assert "cannot be read" in res.stderr and "Traceback" not in res.stderr


def test_unknown_option_exits_2():
    res = llmops("validate", "--no-such-flag")
    assert res.returncode == 2


def test_unknown_run_exits_2(tmp_path):
    res = llmops("status", "nothing-here", "--runs-dir", str(tmp_path))
    assert res.returncode == 2
    assert "no run 'nothing-here'" in res.stderr


def test_schema_is_json_with_descriptions():
    res = llmops("schema")
    assert res.returncode == 0
    schema = json.loads(res.stdout)
    assert schema["title"] == "RunSpec"
    assert "description" in schema["properties"]["name"]


def test_render_local_writes_script_and_resolved_spec(tmp_path):
    out = tmp_path / "rendered"
    res = llmops("render", str(REPO / "examples" / "tiny-cpu.yaml"), "--out", str(out))
    assert res.returncode == 0, res.stderr
    script = (out / "launch.sh").read_text()
    assert "-m llmops_model.launch" in script and "--nproc-per-node 4" in script
    assert "num_layers: 4" in (out / "spec.yaml").read_text()  # resolved: preset values written out


def test_a_rendered_folder_is_no_run_and_a_runs_dir_that_is_a_file_is_bad_input(tmp_path):
    """`status` showed a rendered folder as PENDING for ever, `cancel` waited 2 minutes on it and `logs -f` never
    returned; a --runs-dir that is a file ended in a NotADirectoryError traceback (exit 1)."""
    out = tmp_path / "rendered"
    assert llmops("render", str(REPO / "examples" / "tiny-cpu.yaml"), "--out", str(out)).returncode == 0
    for command in (["status"], ["cancel"], ["resume"], ["logs", "-f"]):
        res = llmops(*command, str(out), timeout=60)
        assert res.returncode == 2 and "is a folder `llmops render` wrote, not a run" in res.stderr, (command, res)
    assert not (out / "cancel-requested").exists()
    spec = tmp_path / "spec.yaml"
    spec.write_text((REPO / "examples" / "tiny-cpu.yaml").read_text())
    res = llmops("submit", str(spec), "--runs-dir", str(spec / "sub"))
    assert res.returncode == 2 and "cannot make the run folder" in res.stderr and "Traceback" not in res.stderr, res


def test_dry_run_starts_nothing(tmp_path):
    runs = tmp_path / "runs"
    res = llmops("run", str(REPO / "examples" / "tiny-cpu.yaml"), "--dry-run", "--runs-dir", str(runs))
    assert res.returncode == 0
    assert "llmops_model.launch" in res.stdout
    assert not list(runs.glob("*/spec.yaml")), "a dry run left a run directory behind"


def test_status_of_all_runs_survives_a_message_that_looks_like_markup(tmp_path):
    from llmops.runs.rundir import RunDir, Status
    from llmops.spec.load import parse_spec

    for name, message in (("calm", "finished"), ("loud", "boom [/tmp/x] [red] [/]")):
        run = RunDir.create(parse_spec(tiny_spec(name)), tmp_path / "runs" / f"{name}-1")
        run.write_status(Status(state="FAILED", message=message, exit_code=1))
    res = llmops("status", "--runs-dir", str(tmp_path / "runs"))
    assert res.returncode == 0, res.stderr
    assert "calm-1" in res.stdout and "boom [/tmp/x] [red] [/]" in " ".join(res.stdout.split())


def test_status_tables_keep_ids_and_states_whole_piped_or_narrow(tmp_path):
    """Piped (80 columns as rich assumes) a 48-character run name's id was cut with an ellipsis, the state read
    `SUCCEED…` and the message column was gone. Piped, a row is now one line; in a narrow terminal (COLUMNS) the
    droppable columns go, and ids and states stay whole."""
    from llmops.runs.rundir import RunDir, Status
    from llmops.spec.load import parse_spec

    name = "llama-350m-fineweb-edu-sft-dpo-ablation-lr3e4-b2"
    message = "stage 'pretrain' failed: exit code 1 (see llmops logs for the traceback of rank 0)"
    for run_id, state in ((f"{name}-20261205-132500", "FAILED"), ("canc-20261205-133138", "SUCCEEDED")):
        run = RunDir.create(parse_spec(tiny_spec(name)), tmp_path / "runs" / run_id)
        run.write_status(Status(state=state, message=message, exit_code=1))
    piped = llmops("status", "--runs-dir", str(tmp_path / "runs"), env={"COLUMNS": ""})
    assert piped.returncode == 0, piped.stderr
    lines = [line for line in piped.stdout.splitlines() if line.strip()]
    assert len(lines) == 3 and "…" not in piped.stdout, piped.stdout  # the header and one line per run
    assert f"{name}-20261205-132500" in lines[1] and "FAILED" in lines[1] and message in lines[1]
    assert "SUCCEEDED" in lines[2] and "age" in lines[0] and "message" in lines[0]
    narrow = llmops("status", "--runs-dir", str(tmp_path / "runs"), env={"COLUMNS": "80"})
    assert narrow.returncode == 0, narrow.stderr
    assert "…" not in narrow.stdout and f"{name}-20261205-132500" in narrow.stdout and "SUCCEEDED" in narrow.stdout
    assert "backend" not in narrow.stdout.splitlines()[0] and "message" in narrow.stdout.splitlines()[0]
    assert message in " ".join(narrow.stdout.split())  # folded, all there
