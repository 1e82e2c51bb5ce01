"""Recognise training metrics in clean log lines: a registry of pure parsers, tried in order.

`MetricParser(extra_patterns).parse(line, state)` returns the `ParsedValue`s of one line that
`lines.clean` has already freed of `\\r`, ANSI escapes and backspaces. `state` is the
`StreamState` of the file the line came from: Keras prints the epoch and its metrics on separate
lines, HF prints a log dict before the bar redraw that tells its step, and a progress bar repeats
values it already showed. Apart from updating `state`, parsing is pure. The state is small plain
data: store `state.dump()` with the file's cursor and `StreamState.load` it after a restart, start
a fresh one when the file is truncated or replaced, and call `MetricParser.flush(state)` after
the final read of a finished job.

Order. Lines matching a configured pattern yield only that pattern's values (the decoy rules
below do not apply to them). Other lines go through a prefilter (the line has `=`, `:` or `{`,
or starts with `Epoch`), the warning rule below, and then the first parser of `PARSERS` that
claims them: Keras epoch line, dict (JSON, HF Trainer, Python repr), progress bar (tqdm,
Lightning), Keras metrics line, `key=value` line.

Steps. A restart from a checkpoint prints steps again; the store keeps the later value.
- `key=value` and JSON: the key `step`, `global_step`, `iteration` or `iter` (lower, Title or
  UPPER case; first in that order), else the key `epoch`, else (`key=value` only) a label in
  the text: `Step 40`, `iter: 7`, `global step 3`, else `Epoch 2`. A step is a non-negative
  whole number. Step keys are never metrics; `epoch` is a metric when something else gave the
  step.
- HF Trainer dict (a Python dict repr with an `'epoch'` key and only numeric values): HF's
  `global_step`, which the dict does not print. With tqdm (a bar was in progress when the first
  dict came), each dict waits in `state` for the next redraw of HF's training bar, which
  `tqdm.write` prints right after it and which shows the step exactly, even when tqdm skipped
  redraws before. The training bar is the one whose total is the largest among the bars in
  progress and itself: a shorter eval bar is not it, nor a finished `datasets` `Map: 100%` bar,
  and a second `trainer.train()` with a new bar is followed. Without a bar in progress
  (`disable_tqdm=True`) the step is the ordinal of distinct `epoch` values: the n-th training
  log is step n, and the eval and summary dicts that repeat its epoch share it (HF's step
  divided by `logging_steps`). `epoch` is emitted as a metric.
- Progress bar `desc: pct|bar| n/total [elapsed<left, rate, k=v, ...]`: when desc is `Epoch E`
  and total is known, step = E * total + n - 1, the step Lightning (>= 2.0) gives its loggers
  (None when the total is `?`); otherwise step = n. A bar is a display, not a log: a postfix value is emitted only when it
  differs from the last one emitted for that name in the stream, and, for `Epoch` bars, once
  more at the end of each epoch (n == total) so epoch-level metrics land on their step; a later
  emission for the same step wins downstream. So a stale value redrawn at the next step is not
  a new point, and a value that really repeats is one point, not one per redraw.
  Lightning's `v_num` is not a metric.
- Keras: a metrics line `n/total ... - name: value` is emitted only when n == total (earlier
  redraws are running averages), at step = epoch - 1 from the last `Epoch N/M` line, matching
  `history.epoch`; without that line the step is None.
- Otherwise None: the caller numbers values per run and name.

Timestamps: a line starting with an ISO date and time (`2026-11-22 19:01:02,123`, optionally in
`[ ]`, `T`, fraction, zone), or a JSON `timestamp`/`time`/`ts`/`datetime` field holding an ISO
string or Unix seconds, gives the value's timestamp; naive stays naive. Otherwise None.

Decoys: what is not a metric.
- Values that are nan or +-inf are dropped; the rest of their line is kept.
- Lines naming a warning, error or exception (`UserWarning:`, `ValueError`, `WARNING`, `ERROR`,
  `CRITICAL`, `FATAL`, `Traceback`) yield nothing, whatever numbers they mention.
- A `key=value` line yields nothing when any `=` in it is not part of a well-formed pair
  (`checkpoints/epoch=1-step=40.pt`, `torch==2.1`, `--lr=0.1`, `x>=1`, `?a=1&b=2`, a Hydra dir
  `out/lr=0.1,bs=32`); when a value is not a number (`optimizer=adam`, `flag=True`, quoted
  strings: a config dump); when the pairs are arguments of a call (`Namespace(lr=0.1)`,
  `StepLR(step_size=30)`); when a key is ALL_CAPS (`SLURM_JOB_ID=1`, environment echoes); or
  when the text before the pairs names a config or shell echo (`Config:`, `args`, `hparams`,
  `export`, a `+ ` or `$ ` prompt, ...). Numbers with units (`time=0.35s`, `eta=0:01:02`) are
  skipped without rejecting the line.
- A `key=value`, JSON or plain dict line without a step is a config echo unless some name looks
  like a metric (contains `loss`, or a word such as acc, accuracy, error, f1, auc, ppl, bleu,
  score, reward, mse, iou, precision, recall, grad_norm, top1) and no name is a hyperparameter
  (step_size, gamma, momentum, weight_decay, batch_size, seed, dropout, epochs, warmup..., beta,
  eps, num_*, *_size, *_dim, ...). So `step_size=30 gamma=0.1` and `lr=0.1 momentum=0.9` are
  config echoes while `loss=0.5 acc=0.9` is a metric line.
- JSON and dict values that are not numbers or numeric strings (and booleans) are ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from hpcsync.errors import ConfigError

STEP_KEYS = ("step", "global_step", "iteration", "iter")
"""Keys that give the step, in order of precedence; `epoch` is the fallback."""
TIME_KEYS = frozenset({"timestamp", "time", "ts", "datetime"})
"""JSON keys read as the line's timestamp when they hold an ISO string or Unix seconds."""
_TIME_SPELLINGS = frozenset(f(key) for key in TIME_KEYS for f in (str.lower, str.title, str.upper))
IGNORED_NAMES = frozenset({"v_num"})
"""Progress-bar postfix names that are not metrics: Lightning's logger version."""


@dataclass(frozen=True, slots=True)
class ParsedValue:
    """One metric value found in a line; step and timestamp are None when the line has none."""

    name: str
    value: float
    step: int | None
    timestamp: datetime | None


@dataclass(slots=True)
class StreamState:
    """What parsing remembers between lines of one stream; JSON-native, to store with a cursor.

    `StreamState(**json.loads(json.dumps(dataclasses.asdict(state))))` restores it exactly.
    """

    keras_epoch: int | None = None
    """N of the last Keras `Epoch N/M` line."""
    open_bars: list[list[int]] = field(default_factory=list)
    """Progress bars in progress as [total, last counter], oldest first, at most `_OPEN_BARS`."""
    hf_bars: bool = False
    """HF log dicts in this stream take their step from a progress bar."""
    hf_n: int | None = None
    """The counter of the last redraw of the longest bar in progress: HF's training bar."""
    hf_pending: dict[str, float] = field(default_factory=dict)
    """An HF log dict waiting for the training-bar redraw that tells its step."""
    hf_epoch: float | None = None
    """The `epoch` of the last HF log dict, when numbering dicts without a bar."""
    hf_ordinal: int = 0
    """How many distinct `epoch` values HF log dicts without a bar have had: their step."""
    bar_steps: dict[str, int | None] = field(default_factory=dict)
    """Per postfix name, the step last emitted from a progress bar."""
    bar_values: dict[str, float] = field(default_factory=dict)
    """Per postfix name, the value last emitted from a progress bar."""

    def dump(self) -> str:
        """Return the state as JSON text."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def load(cls, text: str) -> StreamState:
        """Return the state `dump` wrote; raise ValueError or TypeError if it is not one."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError("parser state is not a JSON object")
        return cls(**data)


_OPEN_BARS = 8


def _value_maker() -> Callable[[str, float, int | None, datetime | None], ParsedValue]:
    """Return a constructor of ParsedValue that fills its slots directly.

    A frozen dataclass's __init__ goes through `object.__setattr__` per field; a log of a
    million points builds a million of these, and the slot setters take half the time.
    """
    new = object.__new__
    set_name, set_value, set_step, set_timestamp = (
        ParsedValue.__dict__[slot].__set__ for slot in ParsedValue.__slots__
    )

    def make(name: str, value: float, step: int | None, timestamp: datetime | None) -> ParsedValue:
        made = new(ParsedValue)
        set_name(made, name)
        set_value(made, value)
        set_step(made, step)
        set_timestamp(made, timestamp)
        return made

    return make


_value = _value_maker()

LineParser = Callable[[str, StreamState], list[ParsedValue] | None]
"""A parser returns None when the line is not its kind, else the values (maybe none) it found."""

# --- shared pieces -----------------------------------------------------------------------------

_NOT_METRICS_HINT = re.compile(r"Warning|Error|Exception|WARN|ERROR|CRITICAL|FATAL|Traceback")
_NOT_METRICS = re.compile(
    r"\b(?:[A-Z]\w*)?(?:Warning|Error|Exception)\b|\b(?:WARNING|WARN|ERROR|CRITICAL|FATAL|Traceback)\b"
)
_TIMESTAMP = re.compile(
    r"\s*\[?(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d{1,6})?(?:Z|[+-]\d\d:?\d\d)?)"
)
_METRIC_WORD = re.compile(
    r"loss|(?:^|[^a-z])(?:acc(?:uracy)?|err(?:or)?|f1|auc|ppl|perplexity|bleu|rouge\w*|score|"
    r"reward|return|mse|mae|rmse|iou|m?ap|precision|recall|wer|cer|nll|kl|entropy|grad_?norm|"
    r"top\d+|dice|psnr|ssim|elbo|fid)\d*(?:$|[^a-z])",
    re.IGNORECASE,
)
_HYPERPARAMETER = re.compile(
    r"(?:step_size|gamma|momentum|weight_decay|wd|batch_size|bs|seed|dropout|epochs|num_epochs|"
    r"max_epochs|max_steps|patience|beta\d?|betas|eps|label_smoothing|warmup\w*|last_epoch|"
    r"(?:num|n|max|min)_\w+|\w+_(?:size|dim|weight|coef))",
    re.IGNORECASE,
)


def _number(text: str) -> float | None:
    """Return text as a finite float, or None (also for nan and inf)."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _leading_timestamp(line: str) -> datetime | None:
    """Return the ISO date-time a line starts with (a logging prefix), or None."""
    match = _TIMESTAMP.match(line)
    if match is None:
        return None
    try:
        return datetime.fromisoformat(match.group(1).replace(",", "."))
    except ValueError:
        return None


def _as_step(value: float) -> int | None:
    """Return value as a step when it is a non-negative whole number."""
    return int(value) if value >= 0 and value.is_integer() else None


def _split_step(pairs: dict[str, float]) -> int | None:
    """Remove the step keys from pairs; return the step they or an `epoch` key give."""
    found = [key for key in pairs if key in _STEP_SPELLINGS]
    if not found:
        return None
    if len(found) == 1:  # the usual line: one step key, nothing to rank
        key = found[0]
        if key.lower() != "epoch":
            return _as_step(pairs.pop(key))
        only = _as_step(pairs[key])
        if only is not None:
            del pairs[key]
        return only
    step: int | None = None
    rank = len(STEP_KEYS)
    epoch_key: str | None = None
    for key in found:
        lowered = key.lower()
        if lowered == "epoch":
            epoch_key = key
            continue
        candidate = _as_step(pairs.pop(key))
        if candidate is not None and _STEP_RANK[lowered] < rank:
            step, rank = candidate, _STEP_RANK[lowered]
    if step is None and epoch_key is not None:
        step = _as_step(pairs[epoch_key])
        if step is not None:
            del pairs[epoch_key]
    return step


_STEP_RANK = {key: rank for rank, key in enumerate((*STEP_KEYS, "epoch"))}
_STEP_SPELLINGS = frozenset(f(key) for key in _STEP_RANK for f in (str.lower, str.title, str.upper))


def _looks_like_config(names: Iterable[str]) -> bool:
    """True when a step-less set of names reads as a config echo rather than metrics."""
    metric_like = False
    for name in names:
        if _HYPERPARAMETER.fullmatch(name):
            return True
        if not metric_like and _METRIC_WORD.search(name):
            metric_like = True
    return not metric_like


def _values(pairs: dict[str, float], step: int | None, when: datetime | None) -> list[ParsedValue]:
    """Return pairs as ParsedValues; a step-less config echo yields none."""
    if step is None and _looks_like_config(pairs):
        return []
    return [_value(name, value, step, when) for name, value in pairs.items()]


# --- Keras -------------------------------------------------------------------------------------

_KERAS_EPOCH = re.compile(r"Epoch (\d+)/(\d+)\s*")
_KERAS_COUNTER = re.compile(r"\s*(\d+)/(\d+|Unknown)\s")
_KERAS_PAIR = re.compile(r" - ([A-Za-z_][\w./]*): (\S+)(?= - |\s*$)")


def parse_keras_epoch(line: str, state: StreamState) -> list[ParsedValue] | None:
    """Remember the epoch of a Keras `Epoch N/M` line; it has no values itself."""
    if not line.startswith("Epoch "):
        return None
    match = _KERAS_EPOCH.fullmatch(line)
    if match is None:
        return None
    state.keras_epoch = int(match.group(1))
    return []


def parse_keras(line: str, state: StreamState) -> list[ParsedValue] | None:
    """Return the epoch's values from a Keras progress line that has reached its total."""
    if " - " not in line or ": " not in line:
        return None
    counter = _KERAS_COUNTER.match(line)
    if counter is None:
        return None
    if counter.group(1) != counter.group(2):
        return []
    step = None if state.keras_epoch is None else state.keras_epoch - 1
    out = []
    for name, text in _KERAS_PAIR.findall(line, counter.end() - 1):
        value = _number(text)
        if value is not None:
            out.append(ParsedValue(name, value, step, None))
    return out


# --- progress bars (tqdm, Lightning) -----------------------------------------------------------

_BAR_COUNTER = re.compile(r"(\d+)(?:/(\d+|\?)|it)\s*\Z")
_EPOCH_DESC = re.compile(r"\s*Epoch\s+(\d+)\b")


def parse_bar(line: str, state: StreamState) -> list[ParsedValue] | None:
    """Return the postfix values of a tqdm or Lightning bar that changed, at the bar's step."""
    text = line.rstrip()
    if not text.endswith("]"):
        return None
    open_at = text.rfind("[")
    if open_at < 0:
        return None
    head = text[:open_at]
    counter = _BAR_COUNTER.search(head, max(0, len(head) - 48))
    if counter is None:
        return None
    n_text, total_text = counter.groups()
    n = int(n_text)
    total = int(total_text) if total_text is not None and total_text != "?" else None
    out = _resolve_hf(state, n, total)
    epoch = _EPOCH_DESC.match(head)
    if epoch is None:
        step: int | None = n
    elif total:
        step = int(epoch.group(1)) * total + n - 1
    else:
        step = None
    if step is not None and step < 0:
        return out
    postfix = text[open_at + 1 : -1]
    if "=" not in postfix:  # most redraws: time and rate only
        return out
    at_end = epoch is not None and n == total
    values, steps = state.bar_values, state.bar_steps
    for part in postfix.split(","):
        name, sep, raw = part.partition("=")
        if not sep:
            continue
        name = name.strip()
        value = _number(raw.strip())
        if value is None or name in IGNORED_NAMES or not name:
            continue
        if values.get(name) != value or (at_end and steps.get(name) != step):
            values[name] = value
            steps[name] = step
            out.append(_value(name, value, step, None))
    return out


def _resolve_hf(state: StreamState, n: int, total: int | None) -> list[ParsedValue]:
    """Note a bar redraw; if it is HF's training bar, return a waiting log dict at its counter."""
    if total is None:
        return []
    bars = state.open_bars
    if len(bars) == 1 and bars[0][0] == total:  # the usual redraw: one bar, in progress
        longest = True
        state.open_bars = [[total, n]] if n < total else []
    else:
        longest = all(total >= other for other, _ in bars)
        state.open_bars = [bar for bar in bars if bar[0] != total]
        if n < total:
            state.open_bars.append([total, n])
            del state.open_bars[:-_OPEN_BARS]
    if not longest:
        return []
    state.hf_n = n
    if not state.hf_pending:
        return []
    out = [ParsedValue(name, value, n, None) for name, value in state.hf_pending.items()]
    state.hf_pending = {}
    return out


# --- dicts: JSON, HF Trainer, Python reprs -----------------------------------------------------

_JSON = json.JSONDecoder()
_PY_PAIR = re.compile(r"'([^'\\]*)':\s*(?:'([^'\\]*)'|([^,}'\s][^,}]*))")


def parse_dict(line: str, state: StreamState) -> list[ParsedValue] | None:
    """Return the numbers of a JSON object or Python dict repr that ends the line."""
    text = line.rstrip()
    if not text.endswith("}"):
        return None
    start = text.find("{")
    if start < 0:
        return None
    body = text[start:]
    if '"' in body:
        # `body` starts with `{` and ends with `}`: json.loads without its whitespace checks.
        try:
            loaded, end = _JSON.raw_decode(body)
        except ValueError:
            loaded = None
        else:
            if end != len(body):
                loaded = None
        if isinstance(loaded, dict):
            return _parse_json(loaded, _leading_timestamp(line) if start else None)
    if "'" not in body:
        return None
    pairs: dict[str, float] = {}
    all_numeric = True
    for key, quoted, bare in _PY_PAIR.findall(body):
        value = _number(quoted if quoted else bare.strip())
        if value is None:
            all_numeric = all_numeric and _is_nonfinite(quoted or bare.strip())
        else:
            pairs[key] = value
    if not pairs:
        return []
    if "epoch" in pairs and all_numeric:
        return _parse_hf(pairs, state)
    step = _split_step(pairs)
    return _values(pairs, step, _leading_timestamp(line) if start else None)


def _is_nonfinite(text: str) -> bool:
    """True for the spellings of nan and inf that float() accepts."""
    try:
        return not math.isfinite(float(text))
    except ValueError:
        return False


def _parse_hf(pairs: dict[str, float], state: StreamState) -> list[ParsedValue]:
    """Hold an HF Trainer log dict for the next training-bar redraw, or number it by epoch."""
    if state.hf_bars or state.open_bars:
        state.hf_bars = True
        flushed = flush_hf(state)
        state.hf_pending = pairs
        return flushed
    if pairs["epoch"] != state.hf_epoch:
        state.hf_epoch = pairs["epoch"]
        state.hf_ordinal += 1
    return [ParsedValue(name, value, state.hf_ordinal, None) for name, value in pairs.items()]


def flush_hf(state: StreamState) -> list[ParsedValue]:
    """Return a waiting HF log dict at the last training-bar counter (end of stream)."""
    out = [ParsedValue(name, value, state.hf_n, None) for name, value in state.hf_pending.items()]
    state.hf_pending = {}
    return out


def _parse_json(loaded: dict[str, object], prefix_time: datetime | None) -> list[ParsedValue]:
    """Return the numeric leaves of a JSON object, flattened with `/`, at its step and time."""
    pairs: dict[str, float] = {}
    when = prefix_time
    isfinite = math.isfinite
    for key, raw in loaded.items():
        if key in _TIME_SPELLINGS:
            stamp = _json_time(raw)
            if stamp is not None:
                when = stamp
                continue
        if type(raw) is float or type(raw) is int:  # the usual leaf; what _flatten does for it
            if isfinite(raw):
                pairs[key] = float(raw)
        else:
            _flatten(key, raw, pairs)
    step = _split_step(pairs)
    return _values(pairs, step, when)


def _flatten(prefix: str, raw: object, out: dict[str, float]) -> None:
    """Add the numeric leaves of raw to out under slash-joined names."""
    if isinstance(raw, bool):
        return
    if isinstance(raw, (float, int)):
        if math.isfinite(raw):
            out[prefix] = float(raw)
    elif isinstance(raw, dict):
        for key, inner in raw.items():
            _flatten(f"{prefix}/{key}", inner, out)
    elif isinstance(raw, str):
        value = _number(raw)
        if value is not None:
            out[prefix] = value


def _json_time(raw: object) -> datetime | None:
    """Return a JSON time field as a datetime: an ISO string, or Unix seconds as aware UTC."""
    if isinstance(raw, str):
        try:
            return datetime.fromisoformat(raw)
        except ValueError:
            return None
    if isinstance(raw, int | float) and not isinstance(raw, bool) and 1e9 <= raw < 1e10:
        return datetime.fromtimestamp(raw, UTC)
    return None


# --- key=value ---------------------------------------------------------------------------------

_KV = re.compile(r"(?:(?<=[\s,;:|(\[{])|^)([A-Za-z_][\w./-]*)=([^\s,;|)\]}=]*)")
_CALL_ARGS = re.compile(r"\w\(\s*[A-Za-z_]\w*\s*=")
_ECHO_WORDS = frozenset(
    [
        "config",
        "configuration",
        "args",
        "arguments",
        "hparams",
        "hyperparameters",
        "hyper-parameters",
        "params",
        "parameters",
        "settings",
        "options",
        "flags",
        "namespace",
        "export",
        "setenv",
        "declare",
        "env",
        "environment",
    ]
)
_WORD = re.compile(r"[a-z][a-z-]*")
_LABEL = re.compile(
    r"\b(global[_ ]step|step|iteration|iter|epoch)\s*[:#]?\s*(\d+)\b", re.IGNORECASE
)


def parse_key_value(line: str, state: StreamState) -> list[ParsedValue] | None:
    """Return the pairs of a `key=value` line that is not a decoy (see the module rules)."""
    if "=" not in line:
        return None
    matches = _KV.findall(line)
    if len(matches) != line.count("=") or ("(" in line and _CALL_ARGS.search(line)):
        return []
    pairs: dict[str, float] = {}
    for name, raw in matches:
        if name.isupper() and len(name) > 1:
            return []
        value = _number(raw)
        if value is not None:
            pairs[name] = value
        elif not _is_nonfinite(raw) and not raw[:1].isdigit() and raw[:2] not in _SIGNED:
            return []
    if not pairs:
        return []
    # Every `=` belongs to a match, so the first match is the first occurrence of its text.
    head = line[: line.find(matches[0][0] + "=")]
    if head and _is_echo_head(head):
        return []
    step = _split_step(pairs)
    if step is None:
        step = _label_step(line)
    return _values(pairs, step, _leading_timestamp(head) if head else None)


_SIGNED = frozenset(f"{sign}{digit}" for sign in "+-." for digit in "0123456789")


def _is_echo_head(head: str) -> bool:
    """True when the text before the pairs is a prompt or names a config or shell echo."""
    start = head.lstrip()
    if start[:1] in _PROMPTS and start[1:2].isspace():
        return True
    return not _ECHO_WORDS.isdisjoint(_WORD.findall(head.lower()))


_PROMPTS = frozenset("+$#>")


def _label_step(line: str) -> int | None:
    """Return the step a `Step 40` / `iter 7` label gives, else an `Epoch 2` label, else None."""
    epoch: int | None = None
    for word, number in _LABEL.findall(line):
        if word.lower() != "epoch":
            return int(number)
        epoch = int(number) if epoch is None else epoch
    return epoch


PARSERS: tuple[tuple[str, LineParser], ...] = (
    ("keras_epoch", parse_keras_epoch),
    ("dict", parse_dict),
    ("progress_bar", parse_bar),
    ("keras", parse_keras),
    ("key_value", parse_key_value),
)
"""The built-in parsers, in the order they are tried."""


# --- configured patterns and the entry point ---------------------------------------------------

_RESERVED_GROUPS = frozenset({"name", "value", "step", "timestamp"})


def compile_patterns(patterns: Sequence[str]) -> list[re.Pattern[str]]:
    """Return the compiled extra patterns; raise ConfigError listing every unusable one."""
    compiled: list[re.Pattern[str]] = []
    problems: list[str] = []
    for text in patterns:
        try:
            pattern = re.compile(text)
        except re.error as exc:
            problems.append(f"`{text}`: {exc}")
            continue
        groups = set(pattern.groupindex)
        has_pair = {"name", "value"} <= groups
        if ("name" in groups) != ("value" in groups) or not (has_pair or groups - _RESERVED_GROUPS):
            problems.append(
                f"`{text}`: needs named groups (?P<name>..)(?P<value>..) or groups named after metrics"
            )
            continue
        compiled.append(pattern)
    if problems:
        raise ConfigError("invalid log metric patterns: " + "; ".join(problems))
    return compiled


def _parse_patterns(line: str, patterns: Sequence[re.Pattern[str]]) -> list[ParsedValue] | None:
    """Return the values of every configured pattern match in line, or None if none matched."""
    out: list[ParsedValue] = []
    matched = False
    for pattern in patterns:
        for match in pattern.finditer(line):
            matched = True
            groups = {k: v for k, v in match.groupdict().items() if v is not None}
            step_value = _number(groups["step"]) if "step" in groups else None
            step = None if step_value is None else _as_step(step_value)
            when = _leading_timestamp(groups["timestamp"]) if "timestamp" in groups else None
            when = when or _leading_timestamp(line)
            if "name" in groups and "value" in groups:
                value = _number(groups["value"])
                if value is not None:
                    out.append(ParsedValue(groups["name"], value, step, when))
            for name, raw in groups.items():
                value = _number(raw) if name not in _RESERVED_GROUPS else None
                if value is not None:
                    out.append(ParsedValue(name, value, step, when))
    return out if matched else None


class MetricParser:
    """Finds metrics in the clean lines of a stream; one instance serves every stream."""

    def __init__(self, extra_patterns: Sequence[str] = ()) -> None:
        self._patterns = compile_patterns(extra_patterns)

    def parse(self, line: str, state: StreamState) -> list[ParsedValue]:
        """Return the metric values in one clean line, updating the stream's state."""
        if self._patterns:
            configured = _parse_patterns(line, self._patterns)
            if configured is not None:
                return configured
        if "=" not in line and ":" not in line and "{" not in line and not line.startswith("Epoch"):
            return []
        if _NOT_METRICS_HINT.search(line) and _NOT_METRICS.search(line):
            return []
        for _, parser in PARSERS:
            found = parser(line, state)
            if found is not None:
                return found
        return []

    def parse_lines(self, lines: Iterable[str], state: StreamState) -> list[ParsedValue]:
        """Return the metric values of consecutive clean lines of one stream, in order."""
        out: list[ParsedValue] = []
        for line in lines:
            out.extend(self.parse(line, state))
        return out

    def flush(self, state: StreamState) -> list[ParsedValue]:
        """Return what the stream still holds back (an HF log dict); call when the stream ends."""
        return flush_hf(state)
