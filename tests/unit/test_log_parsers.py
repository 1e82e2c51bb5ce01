"""Metric parsers: each kind, each decoy rule, and every real-framework fixture end to end."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from hpcsync.errors import ConfigError
from hpcsync.logs.lines import clean_lines, decode
from hpcsync.logs.parsers import PARSERS, MetricParser, ParsedValue, StreamState

FIXTURES = Path(__file__).parent.parent / "fixtures" / "logs"
Point = tuple[str, float, int | None]


def run(*lines: str, parser: MetricParser | None = None) -> list[Point]:
    """Return (name, value, step) of every value parsed from lines of one fresh stream."""
    parser = parser or MetricParser()
    state = StreamState()
    found = parser.parse_lines(lines, state) + parser.flush(state)
    return [(v.name, v.value, v.step) for v in found]


def parse_fixture(relative: str) -> list[ParsedValue]:
    """Return every value parsed from a fixture log, as the daemon would read the whole file."""
    parser = MetricParser()
    state = StreamState()
    lines = clean_lines(decode((FIXTURES / relative / "out.log").read_bytes()))
    return parser.parse_lines(lines, state) + parser.flush(state)


def load(relative: str, name: str) -> Any:
    """Return a fixture's truth file."""
    return json.loads((FIXTURES / relative / name).read_text())


def close(a: float, b: float, rel: float, abs_: float = 0.0) -> bool:
    """True when a printed value a stands for the true value b."""
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


def finals(points: Iterable[tuple[str, int | None, float]]) -> dict[tuple[str, int | None], float]:
    """Return the last value per (name, step): what the store keeps."""
    out: dict[tuple[str, int | None], float] = {}
    for name, step, value in points:
        out[(name, step)] = value
    return out


def assert_bar_series(
    parsed: list[ParsedValue], truth: list[tuple[str, int, float]], rel: float, abs_: float
) -> None:
    """Assert a progress-bar stream: every kept point is true, and every true point is shown.

    A bar emits a value when it changes, so a truth point whose value the bar already showed
    at an earlier step is captured by that earlier point (the series reads as a step function).
    """
    got = finals((p.name, p.step, p.value) for p in parsed)
    want = finals(truth)
    for (name, step), value in got.items():
        assert (name, step) in want, f"{name}@{step}={value} is not in the truth"
        assert close(value, want[(name, step)], rel, abs_), (name, step, value, want[(name, step)])
    for (name, step), value in want.items():
        shown = [(s, v) for (n, s), v in got.items() if n == name and s is not None and s <= step]
        assert shown, f"{name}@{step} never shown"
        assert close(max(shown)[1], value, rel, abs_), (name, step, max(shown), value)
    for name in {p.name for p in parsed}:
        steps = [p.step for p in parsed if p.name == name]
        assert steps == sorted(steps, key=lambda s: -1 if s is None else s), name


# --- real-framework fixtures ---------------------------------------------------------------------


def hf_truth(relative: str) -> list[tuple[str, int, float]]:
    """Return (name, step, value) for every number HF printed, from `trainer.state.log_history`."""
    history = load(relative, "log_history.json")
    skip = {"step", "total_flos"}  # the step is not printed; HF pops total_flos before printing
    return [(k, e["step"], float(v)) for e in history for k, v in e.items() if k not in skip]


def test_hf_trainer_with_tqdm_gives_log_history_steps_exactly() -> None:
    parsed = parse_fixture("hf_trainer/tqdm")
    truth = hf_truth("hf_trainer/tqdm")
    assert [(p.name, p.step) for p in parsed] == [(n, s) for n, s, _ in truth]
    for point, (_, _, value) in zip(parsed, truth, strict=True):
        assert close(point.value, value, rel=6e-4), (point, value)


def test_hf_trainer_without_tqdm_numbers_logs_in_units_of_logging_steps() -> None:
    logging_steps = 5  # as set in scripts/fixtures/logs/hf_trainer.py
    parsed = parse_fixture("hf_trainer/notqdm")
    truth = hf_truth("hf_trainer/notqdm")
    assert [(p.name, (p.step or 0) * logging_steps) for p in parsed] == [
        (n, s) for n, s, _ in truth
    ]
    for point, (_, _, value) in zip(parsed, truth, strict=True):
        assert close(point.value, value, rel=6e-4), (point, value)


def test_lightning_tqdm_bar_matches_the_csv_logger() -> None:
    rows = load("lightning/tqdm", "truth.json")["csv_logger"]
    truth = [
        (k, int(row["step"]), float(v))
        for row in rows
        for k, v in row.items()
        if k not in {"epoch", "step"}
    ]
    parsed = parse_fixture("lightning/tqdm")
    assert {p.name for p in parsed} == {"train_loss", "train_acc", "val_loss", "val_acc"}
    assert_bar_series(parsed, truth, rel=5e-3, abs_=5e-4)  # the bar prints 3 decimals


@pytest.mark.parametrize("verbose", ["verbose1", "verbose2"])
def test_keras_fit_matches_history(verbose: str) -> None:
    truth = load(f"keras/{verbose}", "history.json")
    want = [
        (name, epoch, values[epoch])
        for epoch in truth["epochs"]
        for name, values in truth["history"].items()
    ]
    parsed = parse_fixture(f"keras/{verbose}")
    assert [(p.name, p.step) for p in parsed] == [(n, s) for n, s, _ in want]
    for point, (_, _, value) in zip(parsed, want, strict=True):
        assert close(point.value, value, rel=0, abs_=5.1e-5), (point, value)


def test_tqdm_postfix_matches_the_bar_counter() -> None:
    points = load("tqdm/postfix", "truth.json")["points"]
    truth = [(p["name"], p["step"], p["value"]) for p in points]
    assert_bar_series(parse_fixture("tqdm/postfix"), truth, rel=5e-3, abs_=0)  # 3 significant


@pytest.mark.parametrize("relative", ["json/lines", "print/decoys"])
def test_printed_lines_are_captured_exactly_and_decoys_are_not(relative: str) -> None:
    truth = load(relative, "truth.json")
    parsed = parse_fixture(relative)
    assert [(p.name, p.step) for p in parsed] == [(t["name"], t["step"]) for t in truth["points"]]
    for point, want in zip(parsed, truth["points"], strict=True):
        assert close(point.value, want["value"], rel=1e-12), (point, want)
        stamp = want.get("timestamp")
        assert point.timestamp == (None if stamp is None else datetime.fromisoformat(stamp))
    assert not {p.name for p in parsed} & set(truth["decoy_names"])


def test_fixtures_are_small_and_keep_their_carriage_returns() -> None:
    logs = sorted(FIXTURES.glob("*/*/out.log"))
    assert len(logs) == 8
    assert all(log.stat().st_size < 300_000 for log in logs)
    assert b"\r" in (FIXTURES / "hf_trainer" / "tqdm" / "out.log").read_bytes()


# --- key=value -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "points"),
    [
        ("step=10 loss=0.5 lr=1e-4", [("loss", 0.5, 10), ("lr", 1e-4, 10)]),
        ("step=10,loss=0.5,lr=1e-4", [("loss", 0.5, 10), ("lr", 1e-4, 10)]),
        ("iter=3 | loss=0.2; acc=0.9", [("loss", 0.2, 3), ("acc", 0.9, 3)]),
        (
            "global_step=7 train/loss=0.1 delta=-1.5e-3",
            [("train/loss", 0.1, 7), ("delta", -1.5e-3, 7)],
        ),
        ("Iteration=4 Step=9 loss=1", [("loss", 1.0, 9)]),
        ("epoch=2 val_loss=0.3", [("val_loss", 0.3, 2)]),
        ("step=100 epoch=0.5 loss=0.1", [("epoch", 0.5, 100), ("loss", 0.1, 100)]),
        ("epoch=1.5 loss=0.1", [("epoch", 1.5, None), ("loss", 0.1, None)]),
        ("step=-1 loss=0.1", [("loss", 0.1, None)]),
        ("Step 40: loss=0.3", [("loss", 0.3, 40)]),
        ("[iter 7] loss=0.3", [("loss", 0.3, 7)]),
        ("Epoch 3 | step 12: loss=0.1", [("loss", 0.1, 12)]),
        ("Epoch 3: loss=0.1", [("loss", 0.1, 3)]),
        ("Epoch 3: step=5 loss=0.1", [("loss", 0.1, 5)]),
        ("loss=0.5 (step 10)", [("loss", 0.5, 10)]),
        ("iteration 400: loss=0.2, acc=0.91", [("loss", 0.2, 400), ("acc", 0.91, 400)]),
        ("INFO:__main__:step=3 loss=0.25", [("loss", 0.25, 3)]),
        ("rank0: step=3 loss=0.25", [("loss", 0.25, 3)]),
        ("loss=0.5 acc=0.9", [("loss", 0.5, None), ("acc", 0.9, None)]),
        ("trainLoss=0.5", [("trainLoss", 0.5, None)]),
        ("step=5 loss=nan acc=inf lr=0.1 g=-inf", [("lr", 0.1, 5)]),
        ("step=5 loss=0.2 time=0.35s eta=0:01:02 mem=1.2GB", [("loss", 0.2, 5)]),
        ("train: step=5 (loss=0.2)", [("loss", 0.2, 5)]),
    ],
)
def test_key_value_lines(line: str, points: list[Point]) -> None:
    assert run(line) == points


@pytest.mark.parametrize(
    "line",
    [
        # paths and file names that contain pairs
        "checkpoints/epoch=1-step=40.pt",
        "Saving model to checkpoints/epoch=1-step=40.ckpt",
        "epoch=1-step=40.ckpt",
        "Hydra output dir: outputs/lr=0.1,batch_size=32",
        # config echoes
        "step_size=30 gamma=0.1",
        "lr=0.1 momentum=0.9",
        "batch_size=32 loss_weight=0.5",
        "Namespace(lr=0.1, step_size=30, gamma=0.1, epochs=3)",
        "StepLR(step_size=30, gamma=0.1) at step=3 loss=0.1",
        "Config: step=1 loss=0.1",
        "hparams: step=1 loss=0.1",
        "optimizer=adam lr=0.1 step=3 loss=0.2",
        "step=3 loss=0.2 amp=True",
        "step=3 loss=0.2 name='run'",
        "step=3 loss=",
        # warnings and errors that mention metrics
        "/x/train.py:3: UserWarning: loss=nan at step=3",
        "RuntimeWarning: step=3 loss=0.5 looks odd",
        "WARNING:root:step=3 loss=1e9 exploded",
        "2026-11-22 19:01:02,123 ERROR step=3 loss=12.5 diverged",
        "ValueError: expected loss=0.5 got loss=1.5",
        # shell, environment and command-line echoes
        "export FOO=1",
        "+ export OMP_NUM_THREADS=4",
        "OMP_NUM_THREADS=4 python train.py",
        "$ step=3 loss=0.2",
        "python train.py --lr=0.1 --epochs=3",
        "pip install torch==2.1.0",
        "numpy>=1.26 step=3 loss=0.1",
        "if loss <= 0.5 and step == 3",
        # URLs
        "https://example.org/run?step=3&loss=0.5",
        "GET /metrics?step=3&loss=0.5 200",
        # nothing finite left
        "step=3 loss=nan",
        "step=3 loss=inf acc=-inf",
    ],
)
def test_key_value_decoys_are_not_metrics(line: str) -> None:
    assert run(line) == []


def test_key_value_timestamp_from_a_logging_prefix_stays_naive() -> None:
    state = StreamState()
    (value,) = MetricParser().parse("2026-11-22 19:01:02,123 INFO step=3 loss=0.2", state)
    assert value == ParsedValue("loss", 0.2, 3, datetime(2026, 11, 22, 19, 1, 2, 123000))


def test_key_value_timestamp_with_a_zone_is_aware() -> None:
    state = StreamState()
    (value,) = MetricParser().parse("[2026-11-22T19:01:02.5+01:30] step=3 loss=0.2", state)
    zone = timezone(timedelta(hours=1, minutes=30))
    assert value.timestamp == datetime(2026, 11, 22, 19, 1, 2, 500000, tzinfo=zone)


def test_lines_without_equals_colon_or_brace_are_skipped() -> None:
    assert run("hello world 123", "loss 0.5 at step 3", "") == []


# --- JSON and dicts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "points"),
    [
        ('{"step": 3, "loss": 0.2}', [("loss", 0.2, 3)]),
        (
            '{"step": 3, "eval": {"acc": 0.9, "f1": {"macro": 0.8}}}',
            [("eval/acc", 0.9, 3), ("eval/f1/macro", 0.8, 3)],
        ),
        ('{"step": "4", "loss": "0.25"}', [("loss", 0.25, 4)]),
        (
            '{"step": 1, "ok": true, "tag": "x", "hist": [1, 2], "loss": 0.1, "none": null}',
            [("loss", 0.1, 1)],
        ),
        ('{"step": 1, "loss": NaN, "acc": Infinity, "f1": 0.5}', [("f1", 0.5, 1)]),
        ('{"step": 1, "time": 0.35, "loss": 0.1}', [("time", 0.35, 1), ("loss", 0.1, 1)]),
        ('{"epoch": 2, "val_loss": 0.3}', [("val_loss", 0.3, 2)]),
        ('{"loss": 0.3}', [("loss", 0.3, None)]),
        ("{'step': 3, 'loss': 0.2}", [("loss", 0.2, 3)]),
        ('  {"step": 3, "loss": 0.2}   ', [("loss", 0.2, 3)]),
    ],
)
def test_json_lines(line: str, points: list[Point]) -> None:
    assert run(line) == points


@pytest.mark.parametrize(
    "line",
    [
        '{"lr": 0.1, "batch_size": 32, "optimizer": "adam"}',
        "{'step_size': 30, 'gamma': 0.1, 'base_lrs': [0.1], 'last_epoch': 0, '_step_count': 1}",
        '{"step": 1, "loss": }',
        '{"step": 1, "loss": NaN}',
        "[1, 2, 3]",
        '{"msg": "step=3 loss=0.5"}',
    ],
)
def test_dict_decoys_are_not_metrics(line: str) -> None:
    assert run(line) == []


def test_json_timestamps() -> None:
    parser, state = MetricParser(), StreamState()
    iso = parser.parse('{"timestamp": "2026-11-22T19:01:02.123Z", "step": 1, "loss": 0.1}', state)
    assert iso[0].timestamp == datetime(2026, 11, 22, 19, 1, 2, 123000, tzinfo=UTC)
    unix = parser.parse('{"time": 1795000000.5, "step": 1, "loss": 0.1}', state)
    assert unix[0].timestamp == datetime.fromtimestamp(1795000000.5, UTC)
    naive = parser.parse('{"ts": "2026-11-22 19:01:02", "step": 1, "loss": 0.1}', state)
    assert naive[0].timestamp == datetime(2026, 11, 22, 19, 1, 2)
    prefixed = parser.parse('2026-11-22 19:01:02,000 INFO {"step": 1, "loss": 0.1}', state)
    assert prefixed[0].timestamp == datetime(2026, 11, 22, 19, 1, 2)


# --- Hugging Face Trainer ------------------------------------------------------------------------

HF_LOG = "{'loss': '0.6941', 'grad_norm': '1.2', 'learning_rate': '5e-05', 'epoch': '0.5'}"
HF_POINTS = [("loss", 0.6941), ("grad_norm", 1.2), ("learning_rate", 5e-05), ("epoch", 0.5)]


def test_hf_dict_takes_the_step_from_the_bar_redrawn_after_it() -> None:
    lines = [" 15%|#5   | 6/40 [00:01<00:05, 6.1it/s]", HF_LOG, " 25%|##5  | 10/40 [00:02<00:05]"]
    assert run(*lines) == [(n, v, 10) for n, v in HF_POINTS]


def test_hf_dict_mid_line_after_carriage_return_segments() -> None:
    raw = f"\r  0%|  | 0/40 [00:00<?, ?it/s]\r 25%|##5  | 10/40 [00:01<00:03]\r      \r{HF_LOG}\n"
    raw += "\r 25%|##5  | 10/40 [00:01<00:03]"
    assert run(*clean_lines(raw)) == [(n, v, 10) for n, v in HF_POINTS]


def test_hf_eval_dict_waits_for_the_training_bar_not_the_eval_bar() -> None:
    lines = [
        " 50%|#####| 40/80 [00:01<00:01]",
        "  0%|     | 0/4 [00:00<?, ?it/s]",
        "{'eval_loss': '0.69', 'eval_runtime': '0.01', 'epoch': '1'}",
        "100%|#####| 4/4 [00:00<00:00]",
        " 50%|#####| 40/80 [00:01<00:01]",
    ]
    assert run(*lines) == [("eval_loss", 0.69, 40), ("eval_runtime", 0.01, 40), ("epoch", 1.0, 40)]


def test_hf_dict_without_a_bar_is_numbered_by_distinct_epoch() -> None:
    lines = [
        "{'loss': 0.7, 'epoch': 0.5}",
        "{'eval_loss': 0.6, 'epoch': 0.5}",
        "{'loss': 0.5, 'epoch': 1.0}",
        "{'train_runtime': 3.2, 'train_loss': 0.6, 'epoch': 1.0}",
    ]
    steps = [(name, step) for name, _, step in run(*lines) if name != "epoch"]
    assert steps == [
        ("loss", 1),
        ("eval_loss", 1),
        ("loss", 2),
        ("train_runtime", 2),
        ("train_loss", 2),
    ]


def test_hf_dict_left_at_the_end_of_a_stream_is_flushed_at_the_last_counter() -> None:
    parser, state = MetricParser(), StreamState()
    assert parser.parse(" 30%|###  | 12/40 [00:01<00:03]", state) == []
    assert parser.parse(HF_LOG, state) == []
    assert state.hf_pending
    flushed = parser.flush(state)
    assert [(v.name, v.value, v.step) for v in flushed] == [(n, v, 12) for n, v in HF_POINTS]
    assert parser.flush(state) == []


def test_hf_dict_drops_nan_and_keeps_the_rest() -> None:
    assert run("{'loss': 'nan', 'grad_norm': 'inf', 'learning_rate': 1e-05, 'epoch': 1.0}") == [
        ("learning_rate", 1e-05, 1),
        ("epoch", 1.0, 1),
    ]


def test_stream_state_round_trips_through_json() -> None:
    parser, state = MetricParser(), StreamState()
    parser.parse("Epoch 2/5", state)
    parser.parse(" 30%|###  | 12/40 [00:01<00:03, loss=0.5]", state)
    parser.parse(HF_LOG, state)
    restored = StreamState.load(state.dump())
    assert restored == state
    assert StreamState(**json.loads(json.dumps(dataclasses.asdict(state)))) == state
    after = parser.parse(" 32%|###  | 13/40 [00:01<00:03, loss=0.5]", restored)
    assert [(v.name, v.step) for v in after] == [(n, 13) for n, _ in HF_POINTS]
    assert StreamState.load(StreamState().dump()) == StreamState()


def test_hf_ignores_finished_bars_before_training() -> None:
    map_bar = "Map: 100%|##########| 1000/1000 [00:00<00:00, 9000.00 examples/s]"
    half_map = "Map:  50%|#####     | 500/1000 [00:00<00:00, 9000.00 examples/s]"
    without_tqdm = run(half_map, map_bar, HF_LOG, "{'loss': 0.5, 'epoch': 1.0}")
    assert [step for _, _, step in without_tqdm] == [1, 1, 1, 1, 2, 2]
    with_tqdm = run(
        map_bar, "  0%|   | 0/40 [00:00<?, ?it/s]", HF_LOG, " 12%|#  | 5/40 [00:01<00:05]"
    )
    assert with_tqdm == [(n, v, 5) for n, v in HF_POINTS]


def test_hf_second_training_run_follows_its_new_bar() -> None:
    lines = [
        " 95%|######### | 38/40 [00:01<00:00]",
        HF_LOG,
        "100%|##########| 40/40 [00:01<00:00]",
        "  0%|          | 0/120 [00:00<?, ?it/s]",
        "  3%|          | 3/120 [00:00<00:10]",
        HF_LOG,
        "  4%|          | 5/120 [00:00<00:10]",
    ]
    assert [step for _, _, step in run(*lines)] == [40] * 4 + [5] * 4


def test_hf_eval_on_start_does_not_take_the_eval_bar_for_the_training_bar() -> None:
    lines = [
        "  0%|          | 0/80 [00:00<?, ?it/s]",
        "  0%|          | 0/4 [00:00<?, ?it/s]",
        "{'eval_loss': '0.7', 'epoch': '0'}",
        "  0%|          | 0/80 [00:00<?, ?it/s]",
        " 50%|#####     | 2/4 [00:00<00:00]",
        "{'loss': '0.69', 'epoch': '0.0625'}",
        "  6%|#         | 5/80 [00:01<00:10]",
    ]
    assert run(*lines) == [
        ("eval_loss", 0.7, 0),
        ("epoch", 0.0, 0),
        ("loss", 0.69, 5),
        ("epoch", 0.0625, 5),
    ]


# --- Keras ---------------------------------------------------------------------------------------


def test_keras_verbose2_step_is_the_epoch_counter_from_zero() -> None:
    lines = [
        "Epoch 1/2",
        "32/32 - 0s - 5ms/step - accuracy: 0.5 - loss: 0.69",
        "Epoch 2/2",
        "32/32 - 0s - 5ms/step - accuracy: 0.75 - loss: 0.5 - val_loss: nan",
    ]
    assert run(*lines) == [
        ("accuracy", 0.5, 0),
        ("loss", 0.69, 0),
        ("accuracy", 0.75, 1),
        ("loss", 0.5, 1),
    ]


def test_keras_verbose1_running_averages_are_not_emitted() -> None:
    lines = [
        "Epoch 3/5",
        " 1/24 ━━━━━━━━━━━━━━━━━━━━ 0s 12ms/step - accuracy: 0.3750 - loss: 0.9492",
        "12/24 ━━━━━━━━━━━━━━━━━━━━ 0s 2ms/step - accuracy: 0.6 - loss: 0.7",
        "24/24 ━━━━━━━━━━━━━━━━━━━━ 0s 2ms/step - accuracy: 0.7135 - loss: 0.5489",
    ]
    assert run(*lines) == [("accuracy", 0.7135, 2), ("loss", 0.5489, 2)]


def test_keras_2_bar_and_missing_epoch_line() -> None:
    line = "32/32 [==============================] - 0s 2ms/step - loss: 0.6931 - accuracy: 0.5000"
    assert run(line) == [("loss", 0.6931, None), ("accuracy", 0.5, None)]
    assert run("Epoch 1/1", line)[0] == ("loss", 0.6931, 0)


def test_keras_like_text_without_a_counter_is_not_keras() -> None:
    assert run("Epoch 1/3", "notes - loss: 0.5 - acc: 0.9") == []


# --- progress bars -------------------------------------------------------------------------------


def test_lightning_bar_step_is_the_logger_step_and_v_num_is_not_a_metric() -> None:
    line = "Epoch 1: 50%|█████     | 10/20 [00:01<00:01, 9.1it/s, v_num=0, train_loss=0.779]"
    assert run(line) == [("train_loss", 0.779, 29)]


def test_lightning_epoch_end_emits_epoch_metrics_and_the_later_value_wins() -> None:
    bar = "Epoch 0: 100%|██████████| 20/20 [00:01<00:00, 15.3it/s, v_num=0, train_loss={}{}]"
    lines = [
        bar.format("0.50", ""),
        bar.format("0.40", ""),
        bar.format("0.40", ", val_acc=0.641"),
        "Epoch 1:   0%|          | 0/20 [00:00<?, ?it/s, v_num=0, train_loss=0.40, val_acc=0.641]",
        "Epoch 1:   5%|▌         | 1/20 [00:00<00:01, 15.3it/s, v_num=0, train_loss=0.38, val_acc=0.641]",
        bar.replace("Epoch 0", "Epoch 1").format("0.30", ", val_acc=0.641"),
    ]
    assert run(*lines) == [
        ("train_loss", 0.5, 19),
        ("train_loss", 0.4, 19),
        ("val_acc", 0.641, 19),
        ("train_loss", 0.38, 20),
        ("train_loss", 0.3, 39),
        ("val_acc", 0.641, 39),
    ]


@pytest.mark.parametrize(
    ("line", "points"),
    [
        (
            "train:  40%|####      | 4/10 [00:01<00:02, 3.9it/s, loss=0.3, acc=1]",
            [("loss", 0.3, 4), ("acc", 1.0, 4)],
        ),
        ("12it [00:01, 9.5it/s, loss=0.3]", [("loss", 0.3, 12)]),
        ("Epoch 2: | 5/? [00:01<?, 4.2it/s, loss=0.1]", [("loss", 0.1, None)]),
        (
            "eval: 10%|#| 1/10 [00:00<00:01, phase=val, score=2.5e-3, bad=nan]",
            [("score", 2.5e-3, 1)],
        ),
        ("Epoch 0:   0%|          | 0/20 [00:00<?, ?it/s, loss=0.1]", []),
        ("  0%|          | 0/80 [00:00<?, ?it/s]", []),
    ],
)
def test_progress_bar_postfixes(line: str, points: list[Point]) -> None:
    assert run(line) == points


def test_progress_bar_redraws_of_an_unchanged_value_are_not_new_points() -> None:
    lines = [f"train: {n}0%|#| {n}/10 [00:01<00:02, loss=0.3]" for n in range(1, 5)]
    assert run(*lines, "train: 50%|#| 5/10 [00:01<00:02, loss=0.2]") == [
        ("loss", 0.3, 1),
        ("loss", 0.2, 5),
    ]


def test_a_line_ending_in_brackets_is_not_a_bar() -> None:
    assert run("step=10 loss=0.5 [ok]") == [("loss", 0.5, 10)]


# --- configured patterns -------------------------------------------------------------------------


def test_configured_pattern_with_name_value_and_step() -> None:
    parser = MetricParser([r"(?P<name>\w+) -> (?P<value>\S+) @ (?P<step>\d+)"])
    assert run("perplexity -> 12.5 @ 300", parser=parser) == [("perplexity", 12.5, 300)]


def test_configured_pattern_with_groups_named_after_metrics() -> None:
    parser = MetricParser([r"^top-1 (?P<top1>[\d.]+) top-5 (?P<top5>[\d.]+)"])
    assert run("top-1 0.71 top-5 0.9", parser=parser) == [("top1", 0.71, None), ("top5", 0.9, None)]


def test_configured_pattern_wins_over_builtins_and_reads_a_timestamp_group() -> None:
    parser = MetricParser([r"(?P<timestamp>\S+ \S+) .*step=(?P<step>\d+) loss=(?P<loss>\S+)"])
    state = StreamState()
    (value,) = parser.parse("2026-11-22 19:01:02 step=3 loss=0.2 acc=0.9", state)
    assert value == ParsedValue("loss", 0.2, 3, datetime(2026, 11, 22, 19, 1, 2))
    assert parser.parse("step=3 acc=0.9", state) == [ParsedValue("acc", 0.9, 3, None)]


def test_configured_patterns_are_validated_all_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        MetricParser(["(unclosed", r"(?P<step>\d+)", r"(?P<name>\w+)=", r"(?P<loss>\d+)"])
    message = str(caught.value)
    assert "(unclosed" in message and r"(?P<step>\d+)" in message and r"(?P<name>\w+)=" in message
    assert "loss" not in message


# --- robustness ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        "x" * 1_000_000,
        "step=1 " + "y" * 1_000_000,
        "a=1 " * 250_000,
        "{" + '"k": 1, ' * 120_000 + '"step": 1}',
        "{" + "'k': 1, " * 120_000 + "'epoch': 1}",
        "Epoch 1: 5%|#| 1/20 [" + "k=1, " * 200_000 + "]",
        " 1/2 " + " - loss: 0.5" * 80_000,
        "loss=" + "1" * 1_000_000,
        "=" * 1_000_000,
        "WarningWarning" * 70_000,
    ],
)
def test_megabyte_lines_do_not_blow_up(line: str) -> None:
    MetricParser().parse(line, StreamState())


def test_registry_order_is_documented() -> None:
    assert [name for name, _ in PARSERS] == [
        "keras_epoch",
        "dict",
        "progress_bar",
        "keras",
        "key_value",
    ]


def test_parsed_value_is_frozen() -> None:
    value = ParsedValue("loss", 0.5, 1, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.step = 2  # type: ignore[misc]
