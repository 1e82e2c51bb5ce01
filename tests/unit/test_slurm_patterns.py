"""Slurm filename patterns, expanded as slurmstepd expands a batch job's --output."""

from __future__ import annotations

import pytest

from hpcsync.models import Job, JobState
from hpcsync.slurm.patterns import default_output, expand_pattern, first_node

PLAIN = Job(
    job_id="12",
    job_id_raw=12,
    state=JobState.RUNNING,
    name="train",
    user_name="alice",
    node_list="gpu[03-05]",
    work_dir="/scratch/alice/run",
)
TASK = Job(
    job_id="10_2",
    job_id_raw=13,
    state=JobState.RUNNING,
    name="sweep",
    user_name="bob",
    array_job_id=10,
    array_task_id=2,
    node_list="localhost",
    work_dir="/home/bob/",
)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("%x-%j.out", "/scratch/alice/run/train-12.out"),
        ("/logs/%u/%j.err", "/logs/alice/12.err"),
        ("%J.out", "/scratch/alice/run/12.out"),
        ("%A.out", "/scratch/alice/run/12.out"),
        ("%N-%n-%t-%s.log", "/scratch/alice/run/gpu03-0-0-batch.log"),
        ("job%6j.out", "/scratch/alice/run/job000012.out"),
        ("100%%-%j.out", "/scratch/alice/run/100%-12.out"),
        ("%a.out", "/scratch/alice/run/4294967294.out"),
        ("%q%j.out", "/scratch/alice/run/%q12.out"),
        ("/abs\\%j.out", "/abs%j.out"),
        ("%12j.out", "/scratch/alice/run/0000000012.out"),
    ],
)
def test_expand_plain_job(pattern: str, expected: str) -> None:
    assert expand_pattern(pattern, PLAIN) == expected


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("slurm-%A_%a.out", "/home/bob/slurm-10_2.out"),
        ("%x_%A_%3a.log", "/home/bob/sweep_10_002.log"),
        ("%j.out", "/home/bob/13.out"),
    ],
)
def test_expand_array_task(pattern: str, expected: str) -> None:
    assert expand_pattern(pattern, TASK) == expected


def test_node_argument_wins_and_unknown_node_stays_literal() -> None:
    assert expand_pattern("/l/%N.gpu", PLAIN, node="gpu04") == "/l/gpu04.gpu"
    pending = Job(job_id="5", job_id_raw=5, state=JobState.PENDING)
    assert expand_pattern("/l/%N-%j.out", pending) == "/l/%N-5.out"
    assert expand_pattern("rel-%j.out", pending) == "rel-5.out"


def test_default_output() -> None:
    assert default_output(PLAIN) == "/scratch/alice/run/slurm-12.out"
    assert default_output(TASK) == "/home/bob/slurm-10_2.out"


@pytest.mark.parametrize(
    ("node_list", "expected"),
    [
        ("localhost", "localhost"),
        ("node[01-03,07]", "node01"),
        ("a1,b[2-3]", "a1"),
        ("gpu[1-2]-ib,cpu1", "gpu1-ib"),
        ("", None),
        (None, None),
    ],
)
def test_first_node(node_list: str | None, expected: str | None) -> None:
    assert first_node(node_list) == expected
