"""The test cluster itself works: jobs run, comments reach accounting, fake GPUs are handed out."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conftest import SlurmCluster


def test_tagged_job_completes_and_sacct_keeps_its_comment(slurm_cluster: SlurmCluster) -> None:
    job_id = slurm_cluster.sbatch(
        "--job-name=smoke", "--comment=experiment=smoke", script="sleep 1\n"
    )

    assert slurm_cluster.wait_state(job_id, "COMPLETED", timeout=60) == "COMPLETED"
    record = slurm_cluster.sacct(job_id, "State", "ExitCode", "Comment")
    assert record == {"State": "COMPLETED", "ExitCode": "0:0", "Comment": "experiment=smoke"}


def test_gpu_job_sees_cuda_visible_devices(slurm_cluster: SlurmCluster) -> None:
    out = slurm_cluster.workdir("gpu")
    job_id = slurm_cluster.sbatch(
        "--gres=gpu:1",
        f"--output={out}/%j.out",
        script='echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}"\n',
    )

    slurm_cluster.wait_state(job_id, "COMPLETED", timeout=60)
    text = (out / f"{job_id}.out").read_text()
    assert re.search(r"^CUDA_VISIBLE_DEVICES=[01]$", text, re.MULTILINE), text
