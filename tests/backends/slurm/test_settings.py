"""The slurm: section, cluster profiles and the fit checks: clear errors (exit 2) before anything is queued."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llmops.backends.slurm.cluster import check_fit, parse_sinfo
from llmops.backends.slurm.spec import SlurmProfile, SlurmSpec, parse_profile_section, resolve, time_limit_seconds
from llmops.errors import SpecError
from llmops.spec.load import parse_spec
from llmops_testing import llmops, tiny_spec, write_spec


def slurm_spec(name: str = "tiny-slurm", **slurm) -> dict:
    spec = tiny_spec(name, tp=2, pp=2, procs=2, resources={"nodes": 2, "cpu": True, "processes_per_node": 2})
    spec.update(backend="slurm", slurm=slurm)
    return spec


def render_cli(tmp_path: Path, spec: dict, *extra: str, env: dict | None = None):
    path = write_spec(tmp_path / "spec.yaml", spec)
    return llmops("render", str(path), "--out", str(tmp_path / "out"), *extra, env=env, timeout=60)


@pytest.mark.parametrize("value, seconds", [("30", 1800), ("30:15", 1815), ("4:00:00", 14400),
                                            ("2-00", 172800), ("1-12:30", 131400), ("1-00:00:01", 86401)])
def test_time_limits_read_as_sbatch_reads_them(value: str, seconds: int) -> None:
    assert time_limit_seconds(value) == seconds


@pytest.mark.parametrize("slurm, path, words", [
    ({"time": "4h"}, "slurm.time", "is not a slurm time limit"),
    ({"time": "10:00", "signal_lead": 900}, "slurm.signal_lead", "is not below the time limit 10:00"),
    ({"container": {"image": "x", "mounts": ["/data"]}}, "slurm.container.mounts", "is not src:dst"),
    ({"sbatch_args": ["-p gpu"]}, "slurm.sbatch_args", "is not a long sbatch option"),
    ({"partiton": "gpu"}, "slurm.partiton", "did you mean 'partition'"),
])
def test_bad_slurm_settings_name_the_field_and_the_fix(slurm: dict, path: str, words: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(slurm_spec(**slurm))
    text = err.value.render().lower()
    assert path.lower() in text and words.lower() in text


def test_the_time_limit_is_checked_against_the_lead_the_job_gets(tmp_path) -> None:
    """`time: 3` was refused against signal_lead's default of 300 s though the profile's lead was 60 s, naming
    the whole section; a profile's time with the spec's signal_lead above it was a pydantic traceback."""
    profile = SlurmProfile(defaults={"signal_lead": 60, "time": "30:00"})
    assert resolve(SlurmSpec(time="3"), profile, {}).time_seconds == 180
    with pytest.raises(SpecError) as err:
        resolve(SlurmSpec(signal_lead=1900), profile, {})
    assert "slurm.signal_lead = 1900: is not below the time limit 30:00" in err.value.render()
    with pytest.raises(SpecError) as err:
        resolve(SlurmSpec(time="1"), None, {})
    assert "is not longer than slurm.signal_lead's default (300 s)" in err.value.render()


def test_spec_settings_win_over_profile_defaults_and_lists_add_up() -> None:
    profile = SlurmProfile(defaults={"partition": "batch", "account": "site", "setup": ["module load a"],
                                     "env": {"A": "1", "B": "1"},
                                     "container": {"image": "img", "mounts": ["/lustre:/lustre"]}})
    own = SlurmSpec(account="team", setup=["module load b"], env={"B": "2"},
                    container={"image": "mine", "mounts": ["/home:/home"]})
    merged = resolve(own, profile, {"NCCL_X": "site"})
    assert (merged.partition, merged.account) == ("batch", "team")
    assert merged.setup == ["module load a", "module load b"]
    assert merged.env == {"NCCL_X": "site", "A": "1", "B": "2"}
    assert merged.container.image == "mine" and merged.container.mounts == ["/lustre:/lustre", "/home:/home"]
    # A resume resolves the already resolved spec again: nothing may double.
    assert resolve(merged, profile, {"NCCL_X": "site"}) == merged


def test_bad_profile_section_names_the_key_and_lists_the_allowed_ones() -> None:
    with pytest.raises(SpecError) as err:
        parse_profile_section({"defaults": {"partition": "a", "acount": "b"}, "gpus": 8}, "cluster profile x")
    text = err.value.render()
    assert "slurm.defaults.acount" in text and "did you mean 'account'?" in text
    assert "slurm.gpus" in text and "gpus_per_node" in text


def test_cli_refuses_a_bad_profile_before_anything_is_rendered(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "broken.yaml").write_text(yaml.safe_dump({"slurm": {"defaults": {"time": "forever"}}}))
    res = render_cli(tmp_path, {**slurm_spec(), "profile": "broken"}, env={"LLMOPS_PROFILE_PATH": str(profiles)})
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "cluster profile broken" in res.stderr and "slurm.defaults.time" in res.stderr
    assert not (tmp_path / "out").exists()


def test_cli_refuses_more_gpus_than_the_profile_says_a_node_has(tmp_path: Path) -> None:
    spec = {**slurm_spec(), "profile": "dgx-h100-ib", "resources": {"nodes": 2, "gpus_per_node": 16}}
    spec["parallelism"] = {"tensor": 4}
    spec["train"]["global_batch_size"] = 32
    res = render_cli(tmp_path, spec)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "resources.gpus_per_node = 16" in res.stderr and "8 GPU(s), by profile dgx-h100-ib" in res.stderr
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_partition_the_profile_does_not_list(tmp_path: Path) -> None:
    res = render_cli(tmp_path, {**slurm_spec(partition="gpu-large"), "profile": "slurm-dev"})
    assert res.returncode == 2
    assert "slurm.partition = 'gpu-large'" in res.stderr and "by profile slurm-dev: debug" in res.stderr


def test_ssh_login_needs_a_remote_root(tmp_path: Path) -> None:
    res = render_cli(tmp_path, slurm_spec(login="cluster-login"))
    assert res.returncode == 2 and "slurm.remote_root" in res.stderr and "is required with slurm.login" in res.stderr


SINFO = """gpu001|gpu*|96|gpu:h100:8(S:0-1)
gpu002|gpu*|96|gpu:h100:8(S:0-1)
cpu001|cpu|128|(null)
cpu002|cpu|128|(null)
cpu003|cpu|128|(null)
"""


def test_sinfo_facts_catch_what_the_cluster_cannot_run() -> None:
    facts = parse_sinfo(SINFO)
    assert facts.partitions == ["gpu", "cpu"] and facts.default_partition == "gpu"
    assert facts.gpus_per_node == {"gpu": 8, "cpu": 0} and facts.nodes == {"gpu": 2, "cpu": 3}

    gpu = parse_spec({**slurm_spec(), "resources": {"nodes": 2, "gpus_per_node": 8}})
    assert check_fit(gpu, SlurmSpec(), facts) == []  # the default partition has room
    too_many = gpu.model_copy(update={"resources": gpu.resources.model_copy(update={"gpus_per_node": 16})})
    [problem] = check_fit(too_many, SlurmSpec(), facts)
    assert problem.path == "resources.gpus_per_node" and "at most 8 GPUs per node" in problem.fix
    [problem] = check_fit(gpu, SlurmSpec(partition="cpu"), facts)
    assert "choose a partition with GPU nodes" in problem.fix
    [problem] = check_fit(gpu, SlurmSpec(partition="h200"), facts)
    assert problem.path == "slurm.partition" and "gpu, cpu" in problem.message
    big = gpu.model_copy(update={"resources": gpu.resources.model_copy(update={"nodes": 3})})
    [problem] = check_fit(big, SlurmSpec(), facts)
    assert problem.path == "resources.nodes" and "holds (2" in problem.message


def test_prepare_tasks_larger_than_a_node_are_refused() -> None:
    """prepare_cpus_per_task 8 on the dev cluster's 2-CPU nodes (its sinfo below) was submitted, exit 0, and
    every job sat PENDING (PartitionConfig) forever; slurm.cpus_per_task 8 was refused."""
    facts = parse_sinfo("n1|debug*|2|(null)\nn2|debug*|2|(null)\n")
    spec = parse_spec({**slurm_spec(), "prepare": {"input": {"builtin": "python-docstrings"},
                                                   "output": {"dir": "/tmp/data"}}})
    assert "prepare" in spec.stages
    [problem] = check_fit(spec, SlurmSpec(prepare_cpus_per_task=8), facts)
    assert problem.path == "slurm.prepare_cpus_per_task" and "(2 CPUs, by sinfo)" in problem.message
    assert problem.fix == "use at most 2"
    assert check_fit(spec, SlurmSpec(prepare_cpus_per_task=2), facts) == []
    no_prepare = parse_spec(slurm_spec())
    assert check_fit(no_prepare, SlurmSpec(prepare_cpus_per_task=8), facts) == []  # it asks for no such task
