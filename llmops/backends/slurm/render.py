"""The Slurm backend's artefacts: one sbatch script per torchrun stage, and the script that submits them.

Both are plain bash that a platform engineer can read, and submit by hand:
``llmops submit`` runs exactly the rendered ``slurm/submit.sh``. Rendering is
a pure function of the resolved spec and the run directory's path on the
cluster, so golden files pin it down.

The batch script follows NeMo-Run's requeue loop: a finished flag so that a
completed stage never runs again, a restart count in every log name, and a
bounded number of requeues (``restarts.max_restarts``).
"""

from __future__ import annotations

from dataclasses import dataclass

from llmops.backends.slurm.spec import SlurmSpec
from llmops.errors import EXIT_BAD_INPUT, EXIT_HUNG, EXIT_REQUEUE
from llmops.secrets import FILE as SECRETS_FILE
from llmops.shell import quote as q
from llmops.spec.run import SAMPLES_DEADLINE_ENV, SAMPLES_DEADLINE_S, RunSpec

# Stages that are Python functions over shards rather than torchrun jobs; submitted through submitit.
FANOUT_STAGES = ("prepare",)
RENDEZVOUS_BASE_PORT = 29500
_SIGNAL_COMMENT = ("SIGUSR1 to this script (B:) before the time limit; it tells training to checkpoint.\n"
                   "# Slurm checks limits periodically: it may come up to a minute early.")


@dataclass(frozen=True)
class Target:
    """Where the job runs: the run directory as the cluster sees it, and the Python that has llmops."""

    run_dir: str
    python: str
    run_id: str


def sbatch_options(spec: RunSpec, slurm: SlurmSpec, *, stage: str, run_dir: str) -> list[tuple[str, str]]:
    """(#SBATCH option, comment) pairs for a stage's job."""
    res = spec.resources
    opts = [
        (f"--job-name={spec.name}.{stage}", ""),
        (f"--nodes={res.nodes}", ""),
        ("--ntasks-per-node=1", "One torchrun agent per node; it starts the node's training processes."),
    ]
    if slurm.cpus_per_task:
        opts.append((f"--cpus-per-task={slurm.cpus_per_task}", ""))
    if not res.cpu:
        count = f"{slurm.gpu_type}:{res.gpus_per_node}" if slurm.gpu_type else str(res.gpus_per_node)
        flag = f"--gpus-per-node={count}" if slurm.gpu_request == "gpus-per-node" else f"--gres=gpu:{count}"
        opts.append((flag, ""))
    for name in ("partition", "account", "qos", "time", "mem", "constraint"):
        value = getattr(slurm, name)
        if value is not None:
            opts.append((f"--{name}={value}", ""))
    if slurm.exclusive if slurm.exclusive is not None else not res.cpu:
        opts.append(("--exclusive", "Whole nodes: no other job shares their GPUs, NICs or memory bandwidth."))
    opts += [
        ("--requeue", "The job may go back to the queue: this script requeues it, and so may preemption."),
        (f"--signal=B:USR1@{slurm.signal_lead}", _SIGNAL_COMMENT),
        ("--kill-on-invalid-dep=yes", "Cancelled, not left pending forever, when an earlier stage fails."),
        ("--open-mode=append", "This script's own log, appended to by every restart; training logs to $LOG below."),
        (f"--output={run_dir}/logs/slurm-{stage}-%j.out", ""),
        (f"--chdir={run_dir}", ""),
    ]
    if slurm.sbatch_args:
        opts += [(slurm.sbatch_args[0], "From slurm.sbatch_args:")] + [(a, "") for a in slurm.sbatch_args[1:]]
    return opts


def render_stage(spec: RunSpec, slurm: SlurmSpec, *, stage: str, target: Target) -> str:
    """The batch script of one torchrun stage (pretrain, align)."""
    res = spec.resources
    header = _header(spec, slurm, stage=stage, target=target)
    # Comments go on lines of their own: sbatch reads everything after `#SBATCH ` as options.
    sbatch = [line for option, comment in sbatch_options(spec, slurm, stage=stage, run_dir=target.run_dir)
              for line in ([f"# {comment}"] if comment else []) + [f"#SBATCH {option}"]]
    launch = ("bash -c 'exec \"$1\" -m llmops_model.launch --node-rank=\"$SLURM_NODEID\" \"${@:2}\"' node \\\n"
              f"        {q(target.python)} --nnodes={res.nodes} --nproc-per-node={res.procs_per_node} \\\n"
              '        --rdzv-backend=static --rdzv-endpoint="$HEAD:$PORT" "$RUN_DIR"')
    parts = [
        header,
        "\n".join(sbatch),
        _preamble(spec, stage=stage, target=target),
        _environment(spec, slurm),
        _container(slurm, target),
        _RUN.replace("@LAUNCH@", launch).replace("@REQUEUE@", str(EXIT_REQUEUE)),
        _OUTCOME.replace("@REQUEUE@", str(EXIT_REQUEUE)).replace("@BAD_INPUT@", str(EXIT_BAD_INPUT))
        .replace("@HUNG@", str(EXIT_HUNG)),
    ]
    return "\n\n".join(p.strip("\n") for p in parts if p) + "\n"


def _header(spec: RunSpec, slurm: SlurmSpec, *, stage: str, target: Target) -> str:
    res, par = spec.resources, spec.parallelism
    kind = "CPU process(es)" if res.cpu else "GPU(s)"
    return f"""#!/bin/bash
# llmops run {target.run_id}, stage {stage}: {res.nodes} node(s) x {res.procs_per_node} {kind}, \
TP={par.tensor} PP={par.pipeline} DP={spec.data_parallel}.
# Written by llmops (backend slurm); `llmops submit` submits it through slurm/submit.sh. By hand:
#   sbatch {target.run_dir}/slurm/{stage}.sbatch
#
# One srun task per node runs torchrun, which starts the node's training processes. Before the time
# limit ({slurm.signal_lead} s ahead) Slurm sends this script SIGUSR1; on preemption or `scontrol requeue` it
# sends everything SIGTERM. Either way training saves a checkpoint and exits {EXIT_REQUEUE}, and the job goes back
# to the queue (at most restarts.max_restarts={spec.restarts.max_restarts} times) until training has finished.
# Every attempt resumes from the latest complete checkpoint and logs to logs/{stage}.restart-<n>.log."""


def _preamble(spec: RunSpec, *, stage: str, target: Target) -> str:
    return f"""set -uo pipefail   # no -e: srun's exit code decides what happens next

RUN_DIR={q(target.run_dir)}
STAGE={stage}
MAX_RESTARTS={spec.restarts.max_restarts}
# Written when the stage has completed; a completed stage never runs, or requeues, again.
FINISHED="$RUN_DIR/slurm/$STAGE.finished"
# Restart number for log names: requeues of this job, after the attempts of earlier submissions (resume).
RESTART=$(( ${{LLMOPS_RESTART_BASE:-0}} + ${{SLURM_RESTART_COUNT:-0}} ))
LOG="$RUN_DIR/logs/$STAGE.restart-$RESTART.log"
# Begun at once: an attempt requeued before its launch (a notice during setup) still has its log, so the
# numbers have no gaps for `llmops logs -f` to stop at.
echo "[llmops] $STAGE, attempt $RESTART: job $SLURM_JOB_ID on $(hostname)" >>"$LOG"

# One line per event in slurm/events.log (and this job's log); `llmops status` reads them.
event() {{
    echo "$(date +%s) $STAGE job=$SLURM_JOB_ID restart=$RESTART $*" | tee -a "$RUN_DIR/slurm/events.log"
}}

# The pre-timeout SIGUSR1 reaches only this script (B:), which passes it on to every process of the job
# steps (scancel --signal signals them and kills nothing; srun itself would end the step on a signal).
# The launchers forward it to their workers, which checkpoint at the end of the step and exit 75. Trapped
# from the start: a notice during the setup below means no launch, and a requeue.
NOTICE=0    # set when the pre-timeout SIGUSR1 arrives: checkpoint, then requeue
STOPPED=0   # set when Slurm sends SIGTERM: requeue by an admin, preemption, scancel, time limit
trap 'NOTICE=1; event notice signal=USR1; scancel --signal=USR1 "$SLURM_JOB_ID"' USR1
trap 'STOPPED=1; event notice signal=TERM' TERM  # the training processes get SIGTERM from Slurm directly

if [ -e "$FINISHED" ]; then
    event finished "reason=already finished before this attempt"
    exit 0
fi
if [ "${{SLURM_RESTART_COUNT:-0}}" -gt "$MAX_RESTARTS" ]; then
    event failed code=1 "reason=requeued ${{SLURM_RESTART_COUNT}} times, more than restarts.max_restarts=$MAX_RESTARTS"
    exit 1
fi"""


def _environment(spec: RunSpec, slurm: SlurmSpec) -> str:
    lines = []
    if slurm.setup:
        lines += ["# Site and user setup (slurm.setup)."] + slurm.setup + [""]
    if spec.secrets:
        lines += [f"# Secrets ({', '.join(sorted(spec.secrets))}): from a mode-0600 file `llmops submit` wrote, never",
                  "# from this script.",
                  f'if ! [ -r "$RUN_DIR/{SECRETS_FILE}" ]; then',
                  '    event failed code=2 "reason=the secrets file is gone; `llmops resume` writes it again"',
                  "    exit 2",
                  "fi",
                  f'set -a; . "$RUN_DIR/{SECRETS_FILE}"; set +a', ""]
    lines += ["# Environment of the training processes.",
              "export PYTHONUNBUFFERED=1",
              'export LLMOPS_RESTART="$RESTART" LLMOPS_STAGE="$STAGE"']
    if spec.resources.cpu:
        lines += ["export CUDA_VISIBLE_DEVICES=   # a CPU run stays on the CPU even on GPU nodes",
                  "# Each training process gets its share of the task's CPUs; oversubscription slows gloo badly.",
                  f'export OMP_NUM_THREADS=$(( ${{SLURM_CPUS_ON_NODE:-1}} / {spec.resources.procs_per_node} ))',
                  '[ "$OMP_NUM_THREADS" -ge 1 ] || export OMP_NUM_THREADS=1']
    if spec.resources.nodes > 1:
        lines += ["# Samples after training (rank 0, node 0): the other nodes' torchrun agents leave after 300 s,",
                  "# and srun's --wait=60 then ends this node's task; they stop in time, the stage a success.",
                  f"export {SAMPLES_DEADLINE_ENV}={SAMPLES_DEADLINE_S}"]
    lines += [f"export {k}={q(v)}" for k, v in sorted(slurm.env.items())]
    lines += ["",
              "# torchrun's rendezvous store lives on the first node of the allocation (node rank 0); node ranks",
              "# are SLURM_NODEID, so global ranks follow the node list. Static, not c10d: an agent whose peer",
              "# died then exits at once instead of waiting for the dead store. One port per job, so jobs",
              "# sharing a node do not collide.",
              'HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
              f"PORT=$(( {RENDEZVOUS_BASE_PORT} + SLURM_JOB_ID % 1000 ))"]
    return "\n".join(lines)


def _container(slurm: SlurmSpec, target: Target) -> str:
    c = slurm.container
    if c is None or slurm.container_runtime == "none":
        return "CONTAINER=()   # no container: the training processes run in the node's own environment"
    runs_root = target.run_dir.rsplit("/", 1)[0] or "/"
    mounts = ",".join(dict.fromkeys([f"{runs_root}:{runs_root}", *c.mounts]))
    flags = [f"--container-image={q(c.image)}", f"--container-mounts={q(mounts)}",
             f"--container-workdir={q(c.workdir or target.run_dir)}",
             "--no-container-mount-home   # what the job needs is mounted above; $HOME stays out"]
    if slurm.container_runtime == "pyxis":
        lines = "\n".join(f"    {f}" for f in flags)
        return f"# The training processes run in a container, through pyxis.\nCONTAINER=(\n{lines}\n)"
    lines = "\n".join(f"        {f}" for f in flags)
    return f"""# pyxis adds --container-* options to srun; where it is absent the job runs in the node's environment.
if srun --help 2>&1 | grep -q -- --container-image; then
    CONTAINER=(
{lines}
    )
else
    printf 'llmops: pyxis is not installed on this cluster; running without the container image %s\\n' \\
        {q(c.image)} >&2
    CONTAINER=()
fi"""


_RUN = r"""if [ -e "$RUN_DIR/cancel-requested" ]; then   # `llmops cancel` while this attempt waited or set up
    event cancelled code=1 "reason=cancelled by the user before the launch"
    exit 1
fi
event start nodes=$SLURM_JOB_NODELIST log=logs/$STAGE.restart-$RESTART.log
CODE=@REQUEUE@   # a notice before the launch: nothing to lose, requeue; otherwise srun's code replaces it
if [ "$NOTICE" = 0 ] && [ "$STOPPED" = 0 ]; then
    # --wait: once one node's agent has exited, the others get 60 s before they are killed
    # (a crash on one node must not leave the others waiting in a collective).
    # bash -c runs a fixed script in each task, whose own shell reads $SLURM_NODEID (its node rank); every
    # value reaches it as an argument, never as part of the script's text.
    # --cpus-per-task: the node's CPUs for its agent and workers (srun does not inherit sbatch's since 22.05).
    srun --ntasks-per-node=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-$SLURM_CPUS_ON_NODE}" \
        --kill-on-bad-exit=0 --wait=60 "${CONTAINER[@]}" \
        @LAUNCH@ \
        >>"$LOG" 2>&1 &
    SRUN=$!
    # `wait` returns early (above 128) when a trapped signal arrives; wait again until srun itself has exited.
    # One that exited while the trap ran still has its status for a last wait (127: that wait had it).
    while :; do
        wait "$SRUN"
        CODE=$?
        kill -0 "$SRUN" 2>/dev/null && continue
        if [ "$CODE" -gt 128 ]; then
            wait "$SRUN"
            LAST=$?
            [ "$LAST" = 127 ] || CODE=$LAST
        fi
        break
    done
fi"""

_OUTCOME = r"""# What the attempt's exit code means (0 done, @REQUEUE@ checkpointed and wants a requeue, @BAD_INPUT@ bad input).
if [ "$CODE" = 0 ]; then
    touch "$FINISHED"
    event finished code=0
    exit 0
fi
if [ -e "$RUN_DIR/cancel-requested" ]; then
    event cancelled code=$CODE "reason=cancelled by the user"
    exit 1   # not 0: later stages (--dependency=afterok) must not start
fi
if [ "$STOPPED" = 1 ]; then
    event stopped code=$CODE "reason=stopped by Slurm (requeue, preemption, scancel or time limit)"
    exit "$CODE"   # Slurm itself requeues or ends the job
fi
if [ "$CODE" = @BAD_INPUT@ ]; then
    event failed code=$CODE "reason=the job rejected its input, see $LOG"
    exit "$CODE"
fi
if [ "$NOTICE" = 1 ] || [ "$CODE" = @REQUEUE@ ]; then
    REASON="checkpointed before the time limit"
elif [ "$CODE" = @HUNG@ ]; then
    REASON="hung: no progress within restarts.hang_timeout, every rank's stacks in $LOG"
else
    REASON="crashed with exit code $CODE, see $LOG"
fi
if [ "${SLURM_RESTART_COUNT:-0}" -ge "$MAX_RESTARTS" ]; then
    event failed code=$CODE "reason=$REASON; gave up after $MAX_RESTARTS restart(s) (restarts.max_restarts)"
    exit "$CODE"
fi
event requeue code=$CODE "reason=$REASON"
if ! scontrol requeue "$SLURM_JOB_ID"; then
    event failed code=$CODE "reason=$REASON; Slurm refused to requeue the job (scontrol requeue), see $LOG"
fi
exit "$CODE"
"""  # noqa: E501 (the rendered script's own comment line, pinned by the golden files)


def render_submit(spec: RunSpec, *, target: Target) -> str:
    """The script that submits every stage in order, each waiting for the one before (afterok)."""
    blocks = []
    for i, stage in enumerate(spec.stages, 1):
        if stage in FANOUT_STAGES:
            what = ("data preparation. Its phases go in as submitit jobs, each after the one before;\n#   "
                    "the map phases (clean, tokenize) as job arrays of one task per shard")
            submit = (f"ids=$({q(target.python)} -m llmops.backends.slurm.fanout \"$RUN_DIR\" {stage} "
                      f"${{DEP:+--dependency=\"$DEP\"}})")
        else:
            what = f"torchrun on {spec.resources.nodes} node(s), as slurm/{stage}.sbatch says"
            submit = (f"base=$(find logs -maxdepth 1 -name '{stage}.restart-*.log' | sed 's/.*restart-//; s/[.]log$//' "
                      "| sort -n | tail -n 1)\n"
                      "    base=$(( ${base:--1} + 1 ))  # after the attempts of earlier submissions\n"
                      f"    ids=$(sbatch --parsable ${{DEP:+--dependency=\"$DEP\"}} "
                      f"--export=ALL,LLMOPS_RESTART_BASE=\"$base\" slurm/{stage}.sbatch)\n"
                      "    ids=${ids%%;*}  # --parsable prints <id>[;<cluster>]")
        blocks.append(f"""# Stage {i}: {stage}: {what}.
if [ -e slurm/{stage}.finished ]; then
    echo "{stage} finished"
else
    {submit}
    SUBMITTED+=($ids)
    echo "{stage} $ids"
    DEP="afterok:${{ids##* }}"
fi""")
    body = "\n\n".join(blocks)
    return f"""#!/bin/bash
# Submits run {target.run_id}: {', '.join(spec.stages)}. Written by llmops; `llmops submit` runs it.
# Prints "<stage> <job id>..." for each stage submitted, "<stage> finished" for each skipped because it
# completed in an earlier submission. If a submission fails, the jobs submitted so far are cancelled.
set -euo pipefail
RUN_DIR={q(target.run_dir)}
cd "$RUN_DIR"
SUBMITTED=()
DEP=
trap 'status=$?; [ "$status" = 0 ] || [ ${{#SUBMITTED[@]}} = 0 ] || scancel "${{SUBMITTED[@]}}"' EXIT

{body}
"""
