"""Which GPUs the job has, and which NVML devices they are."""

from __future__ import annotations

import pytest

from hpcsync.gpu.devices import (
    DeviceInfo,
    GpuSelector,
    expand_hostlist,
    first_gpu_index,
    gpu_selectors_from_env,
    gpu_variable,
    match_devices,
    node_rank,
    parse_gpu_list,
)

UUID0 = "GPU-00000000-0000-4000-8000-000000000000"
UUID1 = "GPU-11111111-1111-4111-8111-111111111111"
MIG = "MIG-22222222-2222-4222-8222-222222222222"
# NVML index order is PCI order; here it is the reverse of the device files.
DEVICES = [
    DeviceInfo(index=0, minor=1, uuid=UUID1, name="minor1"),
    DeviceInfo(index=1, minor=0, uuid=UUID0, name="minor0"),
]


def minors(*numbers: int) -> list[GpuSelector]:
    """Return selectors by minor number."""
    return [GpuSelector(minor=n) for n in numbers]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", minors(0)),
        ("0,1", minors(0, 1)),
        ("2-4,7", minors(2, 3, 4, 7)),
        (" 1 , 0 ", minors(1, 0)),
        ("1,1,0", minors(1, 0)),
        (UUID0, [GpuSelector(uuid=UUID0)]),
        (f"{MIG},{UUID1}", [GpuSelector(uuid=MIG), GpuSelector(uuid=UUID1)]),
        (f"0,{UUID1}", [GpuSelector(minor=0), GpuSelector(uuid=UUID1)]),
        ("", []),
        ("NoDevFiles", []),
        ("-1", []),
        ("0,bogus", minors(0)),
    ],
)
def test_parse_gpu_list(text: str, expected: list[GpuSelector]) -> None:
    assert parse_gpu_list(text) == expected


@pytest.mark.parametrize(
    ("env", "variable", "expected"),
    [
        ({}, None, []),
        ({"CUDA_VISIBLE_DEVICES": "NoDevFiles"}, None, []),
        ({"SLURM_JOB_GPUS": "0"}, "SLURM_JOB_GPUS", minors(0)),
        # Under cgroups CUDA_VISIBLE_DEVICES is renumbered from 0; Slurm's index is the real one.
        ({"SLURM_JOB_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "0,1"}, "SLURM_JOB_GPUS", minors(2, 3)),
        # Inside srun, SLURM_JOB_GPUS may be the batch node's; the step's list is this node's.
        ({"SLURM_JOB_GPUS": "0,1", "SLURM_STEP_GPUS": "1"}, "SLURM_STEP_GPUS", minors(1)),
        ({"SLURM_JOB_GPUS": "", "CUDA_VISIBLE_DEVICES": "1"}, "CUDA_VISIBLE_DEVICES", minors(1)),
        ({"CUDA_VISIBLE_DEVICES": "1,0"}, "CUDA_VISIBLE_DEVICES", minors(1, 0)),
        (
            {"SLURM_JOB_GPUS": "0", "CUDA_VISIBLE_DEVICES": UUID1},
            "CUDA_VISIBLE_DEVICES",
            [GpuSelector(uuid=UUID1)],
        ),
        (
            {"SLURM_JOB_GPUS": "0", "CUDA_VISIBLE_DEVICES": f"{MIG}"},
            "CUDA_VISIBLE_DEVICES",
            [GpuSelector(uuid=MIG)],
        ),
        (
            {"SLURM_JOB_GPUS": "1", "CUDA_VISIBLE_DEVICES": f"0,{UUID0}"},
            "SLURM_JOB_GPUS",
            minors(1),
        ),
    ],
)
def test_selectors_from_env_follow_the_precedence(
    env: dict[str, str], variable: str | None, expected: list[GpuSelector]
) -> None:
    found = gpu_variable(env)
    assert (found[0] if found else None) == variable
    assert gpu_selectors_from_env(env) == expected


def test_index_is_matched_by_minor_number_not_nvml_index() -> None:
    matched = match_devices(minors(0), DEVICES)
    assert [(gpu.i, gpu.device.uuid, gpu.device.index) for gpu in matched] == [(0, UUID0, 1)]


def test_two_indices_keep_the_order_of_the_list() -> None:
    matched = match_devices(minors(0, 1), DEVICES)
    assert [(gpu.i, gpu.device.minor) for gpu in matched] == [(0, 0), (1, 1)]


def test_uuid_and_unique_uuid_prefix_match() -> None:
    matched = match_devices([GpuSelector(uuid=UUID1), GpuSelector(uuid="GPU-0000")], DEVICES)
    assert [(gpu.i, gpu.device.uuid) for gpu in matched] == [(0, UUID1), (1, UUID0)]


def test_ambiguous_prefix_matches_nothing() -> None:
    assert match_devices([GpuSelector(uuid="GPU-")], DEVICES) == []


def test_mig_instance_matches_by_uuid() -> None:
    mig = DeviceInfo(index=None, minor=None, uuid=MIG, name="MIG 1g.5gb")
    matched = match_devices([GpuSelector(uuid=MIG)], [*DEVICES, mig])
    assert [gpu.device for gpu in matched] == [mig]


def test_missing_gpu_keeps_its_index_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    matched = match_devices(minors(5, 0), DEVICES)
    assert [(gpu.i, gpu.device.minor) for gpu in matched] == [(1, 0)]
    assert "GPU 5" in caplog.text


def test_device_named_twice_is_sampled_once() -> None:
    matched = match_devices([GpuSelector(minor=0), GpuSelector(uuid=UUID0)], DEVICES)
    assert [(gpu.i, gpu.device.uuid) for gpu in matched] == [(0, UUID0)]


def test_empty_selectors_or_devices() -> None:
    assert match_devices([], DEVICES) == []
    assert match_devices(minors(0), []) == []


def test_device_without_minor_number_matches_by_uuid_only() -> None:
    device = DeviceInfo(index=0, minor=None, uuid=UUID0, name="x")
    assert match_devices(minors(0), [device]) == []
    assert len(match_devices([GpuSelector(uuid=UUID0)], [device])) == 1


def test_first_index_offsets_i() -> None:
    matched = match_devices(minors(0, 1), DEVICES, first_index=4)
    assert [gpu.i for gpu in matched] == [4, 5]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("node[01-03,5]", ["node01", "node02", "node03", "node5"]),
        ("gpu1,login[1-2]", ["gpu1", "login1", "login2"]),
        ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
        ("localhost", ["localhost"]),
        ("n[8-10]", ["n8", "n9", "n10"]),
        ("", []),
    ],
)
def test_expand_hostlist(text: str, expected: list[str]) -> None:
    assert expand_hostlist(text) == expected


def test_node_rank_from_node_list_then_node_id() -> None:
    env = {"SLURM_JOB_NODELIST": "gn[01-03]", "SLURMD_NODENAME": "gn03", "SLURM_NODEID": "0"}
    assert node_rank(env) == 2
    assert node_rank({"SLURM_NODEID": "1"}) == 1
    assert node_rank({}) == 0


@pytest.mark.parametrize(
    ("extra", "local", "expected"),
    [
        ({}, 2, 4),  # --gres=gpu:2: every node has 2
        ({"SLURM_GPUS_PER_NODE": "a100:4"}, 4, 8),
        ({"SLURM_GPUS": "6"}, 1, 12),  # --gpus=6 may spread unevenly: never collide
    ],
)
def test_multi_node_i_counts_nodes_in_node_list_order(
    extra: dict[str, str], local: int, expected: int
) -> None:
    env = {"SLURM_JOB_NODELIST": "gn[01-03]", "SLURMD_NODENAME": "gn03", **extra}
    assert first_gpu_index(env, local) == expected
    assert first_gpu_index({**env, "SLURMD_NODENAME": "gn01"}, local) == 0


def test_two_nodes_give_distinct_consecutive_indices() -> None:
    indices = []
    for node in ("gn01", "gn02"):
        env = {"SLURM_JOB_NODELIST": "gn[01-02]", "SLURMD_NODENAME": node, "SLURM_JOB_GPUS": "0,1"}
        selectors = gpu_selectors_from_env(env)
        matched = match_devices(selectors, DEVICES, first_gpu_index(env, len(selectors)))
        indices += [gpu.i for gpu in matched]
    assert indices == [0, 1, 2, 3]
