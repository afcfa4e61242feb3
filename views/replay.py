"""The replay model: where the learner is in a trace and which event is there.

Plain Python, no Textual: the app and the lessons drive it, and tests drive it directly. It knows
the current layer, the current step (counted from 0 here, shown from 1), the selected unit (a
recurrent unit, a class, a vector element), the layers' step events (materialised lazily from the
trace, in order) and the partial results built from recorded events (the feature map so far). It
never computes a layer's maths.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

#: The event fields that place a step on its layer's grid, per event kind.
POSITION = {"conv_patch": ("row", "col", "filter"), "pool_window": ("row", "col", "channel"),
            "dense_neuron": ("unit",), "embedding_lookup": ("position",),
            "pool_routing": ("row", "col", "channel"), "dense_gradient": ("unit",),
            "conv_input_gradient": ("row", "col", "channel")}
RECURRENT = ("rnn_step", "lstm_step", "gru_step", "recurrent_gradient")
#: Kinds whose selection is a cell of one `(rows, cols)` picture (its flat index is the unit).
GRID_KINDS = {"conv_kernel_gradient": "products", "saliency": "saliency"}
#: Kinds whose selection is a unit (or class, key, element) inside one event's vectors.
VECTOR_KINDS = (*RECURRENT, "softmax", "bidirectional_merge", "embedding_lookup", "attention", "merge", "normalize",
                "activation", "loss_gradient", "conv_input_gradient", *GRID_KINDS)


class JumpError(ValueError):
    """A jump or cursor move that cannot be made; the message is for the learner."""


class Replay:
    """A cursor over a Trace: layer, step and selection, and the events behind them."""

    def __init__(self, trace) -> None:
        self.trace = trace
        self.layer_index = 0
        self.step = 0            # index into the current layer's steps (the UI shows step + 1)
        self.unit = 0            # the selected unit / class / element of a vector event
        self._events: dict[str, list] = {}
        self._sources: dict[str, Iterator | None] = {}

    # -- the trace --------------------------------------------------------------------------------
    def set_trace(self, trace) -> None:
        """Replay another trace of the same model (a new sentence): same layer, first step."""
        self.trace = trace
        self._events.clear()
        self._sources.clear()
        self.layer_index = min(self.layer_index, len(trace.layers) - 1)
        self.step = 0
        self.clamp_unit()

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.trace.layers]

    @property
    def layer(self) -> tuple[str, str]:
        """(name, class) of the current layer."""
        return self.trace.layers[self.layer_index]

    # -- events -----------------------------------------------------------------------------------
    def has_steps(self, name: str | None = None) -> bool:
        return self.trace.has_steps(name or self.layer[0])

    def events_until(self, name: str, index: int) -> list:
        """The layer's step events materialised up to `index` (fewer when the layer has fewer)."""
        events = self._events.setdefault(name, [])
        if name not in self._sources:
            self._sources[name] = self.trace.steps(name) if self.trace.has_steps(name) else None
        source = self._sources[name]
        while len(events) <= index and source is not None:
            nxt = next(source, None)
            if nxt is None:
                self._sources[name] = source = None
            else:
                events.append(nxt)
        return events

    def step_count(self, name: str | None = None) -> int:
        """How many steps the layer has (materialises them all)."""
        name = name or self.layer[0]
        return len(self.events_until(name, 1 << 62))

    def known_step_count(self, name: str | None = None) -> int | None:
        """The step count when every step has been materialised, else None (cheap)."""
        name = name or self.layer[0]
        if name in self._sources and self._sources[name] is None:
            return len(self._events.get(name, []))
        return self.trace.step_total(name) if hasattr(self.trace, "step_total") else None

    @property
    def event(self):
        """The current step's event, or None for a layer without recorded steps."""
        name = self.layer[0]
        events = self.events_until(name, self.step)
        return events[self.step] if self.step < len(events) else None

    def event_at(self, index: int):
        events = self.events_until(self.layer[0], index)
        return events[index] if 0 <= index < len(events) else None

    # -- moving -----------------------------------------------------------------------------------
    def go_layer(self, index: int) -> None:
        self.layer_index = min(max(index, 0), len(self.trace.layers) - 1)
        self.step = 0
        self.clamp_unit()

    def move_layer(self, delta: int) -> None:
        self.go_layer(self.layer_index + delta)

    def go_to(self, layer: str, index: int) -> None:
        """A named layer's step `index` (as lessons name positions)."""
        self.layer_index = self.names.index(layer)
        self.go_step(index)

    def go_step(self, index: int) -> None:
        total = self.known_step_count()
        if index < 0 or total is not None and index >= max(total, 1) or index > 0 and self.event_at(index) is None:
            raise JumpError(self.out_of_range(index + 1))
        self.step = index
        self.clamp_unit()

    def move_step(self, delta: int) -> str | None:
        """`n` / `p`: the next or previous step in processing order; past the last, the next layer."""
        target = self.step + delta
        if target < 0:
            return "this is the layer's first step ([ for the previous layer)"
        if self.event_at(target) is None:
            if self.layer_index < len(self.trace.layers) - 1:
                self.go_layer(self.layer_index + 1)
                return None
            return "this is the last step of the last layer"
        self.step = target
        self.clamp_unit()
        return None

    def out_of_range(self, number: int) -> str:
        total = self.known_step_count()
        total = self.step_count() if total is None else total
        if not total:
            return f"{self.layer[0]} has no steps to jump to"
        return f"step {number} is outside {self.layer[0]}: its steps are 1–{total}"

    # -- the selection ----------------------------------------------------------------------------
    def vector_length(self, event=None) -> int:
        """How many units (or classes) the current event's vectors hold."""
        e = event or self.event
        if e is None:
            return 0
        if e.kind == "recurrent_gradient":
            return len(e.dh)
        if e.kind in RECURRENT:
            return len(e.h)
        if e.kind == "loss_gradient":
            return len(e.gradient)
        if e.kind == "conv_input_gradient":
            return len(e.cells)
        if e.kind in GRID_KINDS:
            return int(np.size(getattr(e, GRID_KINDS[e.kind])))
        if e.kind == "softmax":
            return len(e.probabilities)
        if e.kind == "embedding_lookup":
            return len(e.vector)
        if e.kind == "bidirectional_merge":
            merged = e.merged if e.merged is not None else e.forward
            return int(np.asarray(merged).shape[-1])
        if e.kind == "attention":
            return len(e.weights)
        if e.kind == "merge":
            return int(np.size(e.result))
        if e.kind == "normalize":
            return int(np.size(e.values))
        if e.kind == "activation":
            return int(np.size(e.x))
        return 0

    def clamp_unit(self) -> None:
        n = self.vector_length()
        self.unit = min(max(self.unit, 0), n - 1) if n else 0

    def select_unit(self, unit: int) -> str:
        e = self.event
        n = self.vector_length(e)
        if e is not None and e.kind in ("dense_neuron", "dense_gradient"):
            return self.find_position(unit=unit)
        if not n:
            raise JumpError(f"{self.layer[0]} has no units to select at this step")
        if not 0 <= unit < n:
            raise JumpError(f"unit {unit} is outside {self.layer[0]}: units are 0–{n - 1}")
        self.unit = unit
        return f"unit {unit}"

    def find(self, match: Callable[[Any], bool], start: int = 0) -> int | None:
        """The first step index (from `start`, wrapping once) whose event matches."""
        i = start
        while self.event_at(i) is not None:
            if match(self.event_at(i)):
                return i
            i += 1
        for j in range(0, start):
            if match(self.event_at(j)):
                return j
        return None

    def grid_shape(self) -> tuple[int, ...]:
        """The output shape the current layer's step positions range over, e.g. (rows, cols, filters);
        a 1-D convolution or pooling is one row: (1, steps, filters)."""
        shape = tuple(np.shape(self.trace.output(self.layer[0])))
        e = self.event
        if e is not None and e.kind == "conv_input_gradient":  # positions on the layer's input
            g = next((ev for ev in self.trace.events if ev.kind == "layer_gradient" and ev.layer == self.layer[0]), None)
            shape = tuple(np.shape(g.input_gradient)) if g is not None and g.input_gradient is not None else shape
        if e is not None and e.kind in ("conv_patch", "pool_window", "pool_routing") and len(shape) == 2:
            return (1, *shape)
        return shape

    def find_position(self, **wanted: int) -> str:
        """Go to the step at a grid position, e.g. `row=3, col=4, filter=2` or `unit=5`."""
        e = self.event
        if e is None or e.kind not in POSITION:
            raise JumpError(f"{self.layer[0]} has no {'/'.join(wanted)} steps")
        fields = POSITION[e.kind]
        position = {f: wanted.get(f, getattr(e, f)) for f in fields}
        shape = self.grid_shape()
        for (f, v), size in zip(position.items(), shape):
            if not 0 <= v < size:
                raise JumpError(f"{f} {v} is outside {self.layer[0]}: {f}s are 0–{size - 1}")
        index = self.arithmetic_index(e.kind, position, shape)
        hit = self.event_at(index) if index is not None else None
        if hit is None or hit.kind != e.kind or any(getattr(hit, f) != v for f, v in position.items()):
            index = self.find(lambda ev: ev.kind == e.kind and all(getattr(ev, f) == v for f, v in position.items()),
                              self.step)
        if index is None:
            raise JumpError(f"no recorded step at {describe(position)} in {self.layer[0]}")
        self.go_step(index)
        return describe(position)

    @staticmethod
    def arithmetic_index(kind: str, position: dict, shape: tuple) -> int | None:
        """Where a full, unfiltered run of steps puts a position (checked by the caller)."""
        if kind in ("conv_patch", "pool_window", "pool_routing") and len(shape) == 3:
            r, c, ch = position.values()
            return ch * shape[0] * shape[1] + r * shape[1] + c
        if kind in ("dense_neuron", "embedding_lookup", "dense_gradient"):
            return next(iter(position.values()))
        return None

    def go_time(self, time: int) -> str:
        """Recurrent layers: the step of the current sweep that reads token position `time`."""
        e = self.event
        n = len(self.tokens_or_positions())
        if not 0 <= time < n:
            raise JumpError(f"token position {time} is outside this sentence: positions are 0–{n - 1}")
        if e is not None and e.kind == "embedding_lookup":
            return self.find_position(position=time)
        if e is None or e.kind not in RECURRENT:
            raise JumpError(f"{self.layer[0]} does not step through tokens")
        index = self.find(lambda ev: getattr(ev, "direction", None) == e.direction and ev.time == time)
        if index is None:
            raise JumpError(f"no recorded step reads token position {time} in the {e.direction} sweep")
        self.go_step(index)
        return f"token {time} {token_label(self.trace, time)}"

    def tokens_or_positions(self) -> list:
        e = self.event
        tokens = self.trace.context.get("tokens") or []
        if e is not None and e.kind in RECURRENT:
            return list(range(max(len(tokens), max(ev.time for ev in self.sweep()) + 1)))
        ids = self.token_ids()
        return list(range(len(ids))) if ids is not None else list(range(len(tokens)))

    def token_ids(self) -> np.ndarray | None:
        first, cls = self.trace.layers[0]
        return self.trace.output(first).reshape(-1) if cls == "TextVectorization" else None

    def move_cursor(self, d_row: int, d_col: int) -> str | None:
        """Arrow keys: rows × cols on conv and pooling grids, units × tokens on recurrent steps,
        units on dense layers, classes on the softmax."""
        e = self.event
        if e is None:
            raise JumpError(f"{self.layer[0]} has no steps to move over: press n or ] for the next layer")
        if e.kind in ("conv_patch", "pool_window", "pool_routing", "conv_input_gradient"):
            return self.find_position(row=e.row + d_row, col=e.col + d_col)
        if e.kind in ("dense_neuron", "dense_gradient"):
            return self.find_position(unit=e.unit + d_row + d_col)
        if e.kind in GRID_KINDS:
            rows, cols = np.shape(getattr(e, GRID_KINDS[e.kind]))
            r, c = divmod(self.unit, cols)
            r, c = r + d_row, c + d_col
            if not (0 <= r < rows and 0 <= c < cols):
                raise JumpError(f"the cell ({r}, {c}) is outside the {rows}×{cols} picture")
            self.unit = r * cols + c
            return f"cell ({r}, {c})"
        if e.kind in RECURRENT:
            if d_col:
                return self.go_time(e.time + d_col)
            return self.select_unit(self.unit + d_row)
        if e.kind == "embedding_lookup":
            return self.find_position(position=e.position + d_col + d_row)
        if e.kind == "attention" and d_col:
            return self.go_attention(e.head, e.query + d_col)
        if e.kind in VECTOR_KINDS:
            return self.select_unit(self.unit + d_row + d_col)
        raise JumpError(f"a {e.kind.replace('_', ' ')} step has no grid to move over")

    def go_attention(self, head: int, query: int) -> str:
        """Attention: the step of head `head` for query position `query`."""
        index = self.find(lambda ev: ev.kind == "attention" and ev.head == head and ev.query == query)
        if index is None:
            raise JumpError(f"no step of {self.layer[0]} for head {head}, query {query}")
        self.go_step(index)
        return f"head {head}, query {query}"

    def move_channel(self, delta: int) -> str:
        """`<` / `>`: the previous or next filter (conv) or channel (pooling) at the same cell; the
        previous or next head (attention) for the same query."""
        e = self.event
        if e is not None and e.kind == "attention":
            return self.go_attention(e.head + delta, e.query)
        if e is not None and e.kind == "conv_kernel_gradient":  # the same weight of the next filter
            index = self.find(lambda ev: ev.kind == e.kind and ev.tap == e.tap and ev.filter == e.filter + delta)
            if index is None:
                raise JumpError(f"no filter {e.filter + delta} in {self.layer[0]}")
            self.go_step(index)
            return f"filter {e.filter + delta}"
        if e is None or e.kind not in ("conv_patch", "pool_window", "pool_routing", "conv_input_gradient"):
            raise JumpError("< and > change the filter or channel of a conv or pooling step")
        field = POSITION[e.kind][2]
        return self.find_position(**{field: getattr(e, field) + delta})

    # -- jumps ------------------------------------------------------------------------------------
    def jump(self, text: str) -> str:
        """`j`: `step 7` or `7`, `unit 3`, `class 3`, `token tidak` or `token 2`, `row col filter`,
        `row col channel`, `row col`, `filter 5`, `channel 5`. Returns what was selected."""
        words = text.replace(",", " ").split()
        if not words:
            raise JumpError("type where to go, e.g. 'step 7', 'unit 0', 'token 2' or 'row col filter'")
        head = words[0].lower()
        if head in ("head", "query", "key") and len(words) == 2 and self.event_kind() == "attention":
            value = parse_int(words[1], head)
            e = self.event
            if head == "key":
                return self.select_unit(value)
            return self.go_attention(value if head == "head" else e.head, value if head == "query" else e.query)
        if head in ("step", "unit", "class", "filter", "channel", "token", "position") and len(words) == 2:
            if head == "token" and not is_int(words[1]):
                return self.go_time(self.token_position(words[1]))
            value = parse_int(words[1], head)
            if head == "step":
                self.go_step(value - 1)
                return f"step {value}"
            if head in ("unit", "class"):
                return self.select_unit(value)
            if head in ("token", "position"):
                return self.go_time(value)
            return self.find_position(**{"filter" if self.event_kind() == "conv_patch" else "channel": value})
        numbers = [parse_int(w, "position") for w in words]
        if len(numbers) == 1:
            self.go_step(numbers[0] - 1)
            return f"step {numbers[0]}"
        if len(numbers) in (2, 3):
            kind = self.event_kind()
            if kind not in ("conv_patch", "pool_window"):
                raise JumpError("row col (channel) positions are for conv and pooling layers")
            names = POSITION[kind][:len(numbers)]
            return self.find_position(**dict(zip(names, numbers)))
        raise JumpError(f"cannot read '{text}': type 'step 7', 'unit 0', 'token tidak' or 'row col filter'")

    def event_kind(self) -> str | None:
        e = self.event
        return None if e is None else e.kind

    def token_position(self, word: str) -> int:
        tokens = [t.lower() for t in (self.trace.context.get("tokens") or [])]
        if word.lower() not in tokens:
            raise JumpError(f"'{word}' is not a token of this sentence: {' '.join(tokens) or '(no tokens)'}")
        return tokens.index(word.lower())

    # -- partial results --------------------------------------------------------------------------
    def feature_map_so_far(self) -> np.ndarray | None:
        """The current conv filter's (or pooling channel's) output map with the cells stepped
        through so far; the others are NaN. `(rows, cols)`."""
        e = self.event
        if e is None or e.kind not in ("conv_patch", "pool_window") or getattr(e, "stage", "") == "depthwise":
            return None  # a separable conv's depthwise stage has channels of its own, not the output's
        field = POSITION[e.kind][2]
        shape = self.grid_shape()
        seen = np.full(shape[:2], np.nan, np.float32)
        for ev in self.events_until(self.layer[0], self.step)[:self.step + 1]:
            if getattr(ev, field) == getattr(e, field):
                seen[ev.row, ev.col] = ev.value
        return seen

    def sweep(self) -> list:
        """Every step of the current recurrent event's sweep (direction), in processing order."""
        e = self.event
        if e is None or e.kind not in RECURRENT:
            return []
        return [ev for ev in self.events_until(self.layer[0], 1 << 62)
                if getattr(ev, "direction", None) == e.direction]


def is_int(word: str) -> bool:
    try:
        int(word)
    except ValueError:
        return False
    return True


def parse_int(word: str, what: str) -> int:
    try:
        return int(word)
    except ValueError:
        raise JumpError(f"'{word}' is not a {what} number") from None


def describe(position: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in position.items())


def token_label(trace, time: int) -> str:
    """How a token position reads on screen: 'enak', [pad] past the sentence, [UNK] noted."""
    from nntrace.tracer.sanitize import clean_text

    tokens = trace.context.get("tokens") or []
    if not tokens:  # token ids fed straight in: positions only
        return ""
    if time >= len(tokens) or tokens[time] == "":
        return "[pad]"
    return repr(clean_text(str(tokens[time]), 40))
