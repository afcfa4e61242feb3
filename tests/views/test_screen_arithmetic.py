"""Every equation the app prints is true to its printed digits, as the user sees it on screen.

The app is driven with Textual's pilot at 120×40 and 80×24 through every kind of step (conv patches
at the border and inside, a strided conv with more than 4 input channels, max pooling windows and
average pooling windows with padding, dense units, the softmax with the selected class moved, the
summaries, embedding lookups, LSTM and SimpleRNN steps in both sweeps including masked ones, the
bidirectional merge by concat, sum and ave). At each step the composed screen and the scrollable
panel's whole content are read as text and every equation on them is recomputed from its own
printed operands:

* generically: a line is split on ` = `; each side that is pure arithmetic of printed numbers
  (`+ − · / ( )`, `σ tanh relu exp max`) is evaluated in interval arithmetic, each printed number
  standing for ± half a unit in its last digit; all such sides of a line must share a value;
* structurally, where a view prints the operands in a grid or a table (conv patch × kernel =
  products, the channel sums, the dense table, the softmax table, pooling windows) or an operand
  that another line (or another step) printed (the gates in `c = f·c_prev + i·g`, `c_prev` and
  `h_prev` of the previous token, the merged halves), and the operands shown against the model's
  weights and the previous layer's output (the right patch, zero padding at the border).

No slack is added beyond the printed rounding (the transcendental functions are evaluated with 50
significant digits, so the checker's own rounding is far below any printed digit).

It also fails on an equation cut by line wrapping (a line that starts or ends with `=` or an
operator, or whose parentheses do not balance) and when the current step's equations (the block of
equation lines under its title) are not on the composed screen (below the fold).
"""
from __future__ import annotations

import asyncio
import io
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
import pytest
from rich.console import Console

from nntrace.layers import (AveragePooling2D, Bidirectional, Conv2D, Dense, Embedding, Flatten, Rescaling, SimpleRNN,
                            TextVectorization)
from nntrace.models import CNNFromScratch, RNNFromScratch
from nntrace.tracer import trace
from nntrace.tui import NNTraceApp, Session
from tests.scratch_models import tiny_cnn, tiny_lstm

SIZES = [(120, 40), (80, 24)]
MINUS = "\u2212"  # the binary minus between terms


# =================================================================================================
# Interval arithmetic on exact rationals
# =================================================================================================
@dataclass(frozen=True)
class Iv:
    lo: Fraction
    hi: Fraction

    def __add__(self, o: "Iv") -> "Iv":
        return Iv(self.lo + o.lo, self.hi + o.hi)

    def __sub__(self, o: "Iv") -> "Iv":
        return Iv(self.lo - o.hi, self.hi - o.lo)

    def __neg__(self) -> "Iv":
        return Iv(-self.hi, -self.lo)

    def __mul__(self, o: "Iv") -> "Iv":
        p = [self.lo * o.lo, self.lo * o.hi, self.hi * o.lo, self.hi * o.hi]
        return Iv(min(p), max(p))

    def __truediv__(self, o: "Iv") -> "Iv":
        if o.lo <= 0 <= o.hi:
            raise ArithmeticError("division by an interval that contains 0")
        return self * Iv(1 / o.hi, 1 / o.lo)

    def meets(self, o: "Iv") -> bool:
        return max(self.lo, o.lo) <= min(self.hi, o.hi)

    def __str__(self) -> str:
        return f"[{float(self.lo):.6f}, {float(self.hi):.6f}]"


def exact(x) -> Iv:
    f = Fraction(x)
    return Iv(f, f)


def printed(text: str) -> Iv:
    """A printed number: ± half a unit in its last digit (an integer is an exact count)."""
    text = text.strip().replace(MINUS, "-")
    value = Fraction(text)
    if "." not in text:
        return Iv(value, value)
    half = Fraction(1, 2 * 10 ** len(text.split(".")[1]))
    return Iv(value - half, value + half)


EPS = Fraction(1, 10 ** 40)  # the 50-digit evaluation's own error, rounded outward


def _decimal(f: Fraction) -> Decimal:
    return Decimal(f.numerator) / Decimal(f.denominator)


def monotone(fn):
    """An increasing real function applied to both ends, evaluated with 50 digits, rounded outward."""

    def apply(iv: Iv) -> Iv:
        with localcontext() as ctx:
            ctx.prec = 50
            lo, hi = fn(_decimal(iv.lo)), fn(_decimal(iv.hi))
        return Iv(Fraction(lo) - EPS, Fraction(hi) + EPS)

    return apply


def _sigmoid(d: Decimal) -> Decimal:
    return 1 / (1 + (-d).exp())


def _tanh(d: Decimal) -> Decimal:
    e = (2 * d).exp()
    return (e - 1) / (e + 1)


def _relu(d: Decimal) -> Decimal:
    return max(d, Decimal(0))


FUNCTIONS = {"σ": monotone(_sigmoid), "tanh": monotone(_tanh), "relu": monotone(_relu),
             "exp": monotone(lambda d: d.exp())}


def iv_max(args: list[Iv]) -> Iv:
    return Iv(max(a.lo for a in args), max(a.hi for a in args))


# =================================================================================================
# The generic equation parser
# =================================================================================================
TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<func>σ|tanh|relu|exp|max)(?=\()|(?P<op>[-+−·/(),⌊⌋]))")
FUNC_NAMES = re.compile(r"(σ|tanh|relu|exp|max)\(")
ARITHMETIC_CHARS = set("0123456789. +-−·/(),⌊⌋")
NUMBER = r"[+-]?\d+\.\d+"


class ParseError(ValueError):
    pass


def tokenize(side: str) -> list[tuple[str, str, int, int]]:
    tokens, pos, side = [], 0, side.rstrip()
    while pos < len(side):
        m = TOKEN.match(side, pos)
        if not m or m.end() == pos:
            raise ParseError(f"cannot read {side[pos:]!r}")
        kind = m.lastgroup
        tokens.append((kind, m.group(kind), m.start(kind), m.end(kind)))
        pos = m.end()
    return tokens


class Expr:
    """Recursive descent: expr := term ((+|−|-) term)*; term := unary ((·|/) unary)*;
    unary := sign NUMBER (no space) | NUMBER | FUNC(args) | (expr) | ⌊expr⌋ (floor)."""

    def __init__(self, side: str) -> None:
        self.tokens = tokenize(side)
        self.i = 0

    def peek(self):
        return self.tokens[self.i] if self.i < len(self.tokens) else (None, None, -1, -1)

    def take(self, text: str | None = None):
        tok = self.peek()
        if tok[0] is None or (text is not None and tok[1] != text):
            raise ParseError(f"expected {text!r}, got {tok[1]!r}")
        self.i += 1
        return tok

    def value(self) -> Iv:
        v = self.expr()
        if self.i != len(self.tokens):
            raise ParseError(f"left over: {self.tokens[self.i:]}")
        return v

    def expr(self) -> Iv:
        v = self.term()
        while self.peek()[1] in ("+", "-", MINUS):
            op = self.take()[1]
            rhs = self.term()
            v = v + rhs if op == "+" else v - rhs
        return v

    def term(self) -> Iv:
        v = self.unary()
        while self.peek()[1] in ("·", "/"):
            op = self.take()[1]
            rhs = self.unary()
            v = v * rhs if op == "·" else v / rhs
        return v

    def unary(self) -> Iv:
        kind, text, start, end = self.peek()
        if kind == "op" and text in ("+", "-"):
            self.take()
            nxt = self.peek()
            if nxt[0] == "num" and nxt[2] == end:  # a signed number: `-0.2827`
                self.take()
                return printed(text + nxt[1])
            v = self.unary()
            return v if text == "+" else -v
        if kind == "num":
            self.take()
            return printed(text)
        if kind == "func":
            self.take()
            self.take("(")
            args = [self.expr()]
            while self.peek()[1] == ",":
                self.take()
                args.append(self.expr())
            self.take(")")
            if text == "max":
                return iv_max(args)
            if len(args) != 1:
                raise ParseError(f"{text} takes one argument")
            return FUNCTIONS[text](args[0])
        if text == "(":
            self.take()
            v = self.expr()
            self.take(")")
            return v
        if text == "⌊":
            self.take()
            v = self.expr()
            self.take("⌋")
            return Iv(Fraction(math.floor(v.lo)), Fraction(math.floor(v.hi)))
        raise ParseError(f"unexpected {text!r}")


def is_arithmetic(side: str) -> bool:
    """A side made of printed numbers, operators and the function names only (no symbols)."""
    bare = FUNC_NAMES.sub("(", side)
    return bool(re.search(r"\d", bare)) and set(bare) <= ARITHMETIC_CHARS


def equation_part(line: str) -> str:
    """The line without a trailing note set off by 3+ spaces (`   Keras: +0.1234`, `   (unit 0)`)."""
    return re.split(r"\s{3,}", line.strip())[0]


def check_equation(line: str) -> tuple[int, str | None]:
    """(how many numeric sides, an error or None). The numeric sides must share a value."""
    sides = equation_part(line).split(" = ")
    values = []
    for side in sides:
        if not is_arithmetic(side):
            continue
        try:
            values.append((side.strip(), Expr(side).value()))
        except (ParseError, ArithmeticError, ValueError) as exc:
            return 0, f"cannot evaluate {side.strip()!r}: {exc}"
    if len(values) >= 2:
        lo = max(v.lo for _, v in values)
        hi = min(v.hi for _, v in values)
        if lo > hi:
            detail = "; ".join(f"{s} ∈ {v}" for s, v in values)
            return len(values), f"FALSE: {detail}"
    return len(values), None


WRAP_START = ("=", "+ ", MINUS, "·", "/", ")", ",")
WRAP_END = ("=", "+", MINUS, "·", "/", "(", ",")


def wrap_problem(line: str) -> str | None:
    """An equation cut by wrapping: a line starting or ending inside an equation."""
    s = line.strip()
    if "=" not in s:
        return None
    if s.startswith(WRAP_START):
        return "starts inside an equation (wrapped)"
    if s.endswith(WRAP_END):
        return "ends inside an equation (wrapped)"
    if s.count("(") != s.count(")"):
        return "unbalanced parentheses (wrapped)"
    return None


# =================================================================================================
# Models
# =================================================================================================
def same_padding(size: int, window: int, stride: int) -> tuple[int, int]:
    """TensorFlow's `same`: (pad before, output size)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, out


def cnn_app():
    model = tiny_cnn()
    x = (np.arange(8 * 8 * 3).reshape(1, 8, 8, 3) * 5 % 256).astype(np.float32)
    t = trace(model, x)
    t.context["model_input"] = x
    return NNTraceApp(Session(t, "a test pattern"), model)


def lstm_app():
    model = tiny_lstm()
    return NNTraceApp(Session(trace(model, ["Enak sekali, tidak mahal"]), '"Enak sekali"'), model)


def strided_cnn() -> CNNFromScratch:
    """9×9×3 → conv 6 filters → conv stride 2 over 6 channels → average pooling with padding → dense."""
    rng = np.random.default_rng(5)
    conv_a = Conv2D("conv_a", filters=6, kernel_size=3, padding="same", activation="relu")
    conv_a.set_weights([rng.normal(0, 0.3, (3, 3, 3, 6)), rng.normal(0, 0.1, 6)])
    conv_b = Conv2D("conv_b", filters=4, kernel_size=3, strides=2, padding="same", activation="relu")
    conv_b.set_weights([rng.normal(0, 0.4, (3, 3, 6, 4)), rng.normal(0, 0.1, 4)])
    hidden = Dense("hidden", units=8, activation="relu")
    hidden.set_weights([rng.normal(0, 0.5, (36, 8)), rng.normal(0, 0.1, 8)])
    out = Dense("predictions", units=5, activation="softmax")
    out.set_weights([rng.normal(0, 0.6, (8, 5)), rng.normal(0, 0.1, 5)])
    layers = [Rescaling("rescaling", scale=1 / 255.0), conv_a, conv_b,
              AveragePooling2D("avg_pool", pool_size=2, padding="same"), Flatten("flatten"), hidden, out]
    return CNNFromScratch(layers, "strided_cnn", {"shape": [None, 9, 9, 3], "dtype": "float32"},
                          {"labels": ["plane", "car", "bird", "cat", "deer"]})


def strided_cnn_app():
    model = strided_cnn()
    x = np.random.default_rng(3).integers(0, 256, (1, 9, 9, 3)).astype(np.float32)
    t = trace(model, x)
    t.context["model_input"] = x
    return NNTraceApp(Session(t, "random pixels"), model)


VOCAB = ["", "[UNK]", "enak", "tidak", "sekali", "murah", "mahal", "bagus"]


def text_front(rng, length: int, dim: int):
    vec = TextVectorization("text_vectorization", output_sequence_length=length)
    vec.set_weights([np.array(VOCAB)])
    emb = Embedding("embedding", input_dim=len(VOCAB), output_dim=dim, mask_zero=True)
    emb.set_weights([rng.normal(0, 0.6, (len(VOCAB), dim))])
    return [vec, emb]


def rnn_model() -> RNNFromScratch:
    """Text → SimpleRNN(4) → Dense relu → softmax over 5 classes (more than 4: Σ exp as a column)."""
    rng = np.random.default_rng(11)
    rnn = SimpleRNN("simple_rnn", units=4)
    rnn.set_weights([rng.normal(0, 0.6, (5, 4)), rng.normal(0, 0.5, (4, 4)), rng.normal(0, 0.2, 4)])
    hidden = Dense("hidden", units=6, activation="relu")
    hidden.set_weights([rng.normal(0, 0.7, (4, 6)), rng.normal(0, 0.2, 6)])
    out = Dense("predictions", units=5, activation="softmax")
    out.set_weights([rng.normal(0, 0.7, (6, 5)), rng.normal(0, 0.1, 5)])
    return RNNFromScratch([*text_front(rng, 7, 5), rnn, hidden, out], "scratch_rnn",
                          {"shape": [None, 1], "dtype": "string"},
                          {"labels": ["very bad", "bad", "neutral", "good", "very good"]})


def rnn_app():
    model = rnn_model()
    return NNTraceApp(Session(trace(model, ["Tidak enak, kopi mahal"]), '"Tidak enak, kopi mahal"'), model)


def birnn_app(mode: str):
    """Text → Bidirectional(SimpleRNN(3)) merged by `mode` → softmax."""
    rng = np.random.default_rng(23)
    bi = Bidirectional.from_config({"name": "bidirectional", "merge_mode": mode,
                                    "layer": {"class_name": "SimpleRNN", "config": {"name": "rnn", "units": 3}}})
    bi.set_weights([rng.normal(0, 0.6, s) for s in [(4, 3), (3, 3), (3,)] * 2])
    out = Dense("predictions", units=3, activation="softmax")
    out.set_weights([rng.normal(0, 0.7, (6 if mode == "concat" else 3, 3)), np.zeros(3)])
    model = RNNFromScratch([*text_front(rng, 5, 4), bi, out], f"birnn_{mode}", {"shape": [None, 1], "dtype": "string"},
                           {"labels": ["negative", "neutral", "positive"]})
    return NNTraceApp(Session(trace(model, ["murah sekali bagus"]), '"murah sekali bagus"'), model)


# =================================================================================================
# Reading the screen
# =================================================================================================
def screen_lines(app) -> list[str]:
    return ["".join(seg.text for seg in strip) for strip in app.screen._compositor.render_strips()]


def panel_lines(app) -> list[str]:
    """The panel's whole content (it scrolls), rendered at the width the panel gives it."""
    width = app.query_one("#view").size.width or app.query_one("#main").size.width
    console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
    console.print(app.view_renderable)
    return [line.rstrip() for line in console.export_text().splitlines()]


def visible_panel_lines(app, screen: list[str]) -> list[str]:
    """The main panel's rows of the composed screen (the layer list and the scrollbar cut away)."""
    rows = app.query_one("#main").content_region
    cols = app.query_one("#view").region
    return [row[cols.x:cols.x + cols.width].rstrip() for row in screen[rows.y:rows.y + rows.height]]


# =================================================================================================
# The checker
# =================================================================================================
CONV_TITLE = re.compile(r"^(\S+): filter (\d+) at output row (\d+), col (\d+)")
POOL_TITLE = re.compile(r"^(\S+): channel (\d+) at output row (\d+), col (\d+) \((max|average) pooling, (\d+)×(\d+)")
DENSE_TITLE = re.compile(r"^(\S+): unit (\d+) \((\w+)\)")
SOFTMAX_TITLE = re.compile(r"^(\S+): softmax over (\d+) classes; class (\d+) ")
RECURRENT_TITLE = re.compile(r"^(\S+): (LSTM|SimpleRNN) (forward|backward) sweep, token (\d+) .*, "
                             r"unit (\d+) of 0–(\d+)")
MERGE_TITLE = re.compile(r"^(\S+): merge '(\w+)'")
EMBEDDING_TITLE = re.compile(r"^(\S+): position (\d+), token .* → row (\d+) of the embedding table")
FLATTEN_TITLE = re.compile(r"^(\S+): \(?(\d+)(?:, | × )(\d+)(?:, | × )(\d+)\)? → (\d+) values")


@dataclass
class Checker:
    app: object
    size: tuple[int, int]
    tour: str = ""
    failures: list[str] = field(default_factory=list)
    equation_lines: set = field(default_factory=set)   # distinct equation lines verified
    relations: int = 0                                   # every relation checked (all kinds)
    kinds: Counter = field(default_factory=Counter)      # relations per check kind
    views: Counter = field(default_factory=Counter)      # steps observed per view
    states: dict = field(default_factory=dict)           # (layer, dir, time, unit) → printed states
    merges: list = field(default_factory=list)
    dense_z: dict = field(default_factory=dict)          # (layer, unit) → printed z
    units: dict = field(default_factory=dict)            # recurrent layer → units per sweep
    where: str = ""

    # -- bookkeeping ------------------------------------------------------------------------------
    def fail(self, message: str) -> None:
        self.failures.append(f"[{self.tour} {self.size[0]}×{self.size[1]}, keys {self.where}] {message}")

    def ok(self, kind: str, n: int = 1) -> None:
        self.relations += n
        self.kinds[kind] += n

    def same(self, a: str, b: str, what: str) -> None:
        """Two printed numbers that are the same quantity: their rounding intervals must meet."""
        if printed(a).meets(printed(b)):
            self.ok("same value")
        else:
            self.fail(f"{what}: {a} ≠ {b}")

    def contains(self, text: str, value: float, what: str) -> None:
        """A printed number that shows a known value (a weight, an input): it must round to it."""
        iv = printed(text)
        if iv.lo <= Fraction(float(value)) <= iv.hi:
            self.ok("operand")
        else:
            self.fail(f"{what}: printed {text}, the value is {float(value):.6f}")

    def interval(self, iv: Iv, text: str, what: str, kind: str) -> None:
        if iv.meets(printed(text)):
            self.ok(kind)
        else:
            self.fail(f"{what}: printed {text}, its operands give {iv}")

    # -- one step -----------------------------------------------------------------------------------
    def observe(self, label: str) -> None:
        app = self.app
        self.where = f"{label} @ {app.layer[0]} step {app.step + 1}"
        screen = screen_lines(app)
        panel = panel_lines(app)
        visible = visible_panel_lines(app, screen)
        visible_set = {v.strip() for v in visible}
        for source, lines in (("panel", panel), ("screen", visible)):
            for line in lines:
                problem = wrap_problem(line)
                if problem:
                    self.fail(f"{source} line {line.strip()!r}: {problem}")
                if " = " not in line:
                    continue
                n, error = check_equation(line)
                if error:
                    self.fail(f"{source} line {line.strip()!r}: {error}")
                elif n >= 2:
                    self.equation_lines.add(line.strip())
                    self.ok("equation")
        # The current step's equations (the first block of equation lines, under its title) are on the
        # composed screen, not only further down the scrollable panel.
        stripped = [line.strip() for line in panel]
        first = next((i for i, line in enumerate(stripped) if " = " in line), len(stripped))
        block = []
        for line in stripped[first:]:
            if " = " not in line:
                break
            block.append(line)
        for line in block:
            if line in visible_set:
                self.ok("on screen")
            else:
                self.fail(f"equation below the fold (not on the composed screen): {line!r}")
        title = next((line.strip() for line in panel if line.strip()), "")
        if title and title not in visible_set:
            self.fail(f"the step's first line is not on the screen: {title!r}")
        self.structure([line.strip() for line in panel])

    def structure(self, lines: list[str]) -> None:
        title = lines[0] if lines else ""
        for pattern, method in ((CONV_TITLE, self.conv), (POOL_TITLE, self.pool), (SOFTMAX_TITLE, self.softmax),
                                (DENSE_TITLE, self.dense), (RECURRENT_TITLE, self.recurrent),
                                (MERGE_TITLE, self.merge), (EMBEDDING_TITLE, self.embedding),
                                (FLATTEN_TITLE, self.flatten)):
            m = pattern.match(title)
            if m:
                self.views[method.__name__] += 1
                method(m, lines)
                return
        self.views["summary"] += 1
        self.summary(lines)

    # -- helpers reading the model and the trace (to check that the right operands are shown) --------
    def layer_obj(self, name: str):
        return self.app.model.layer(name)

    def layer_input(self, name: str) -> np.ndarray:
        """The output of the layer before `name` for the traced sample (no batch axis)."""
        names = [n for n, _ in self.app.trace.layers]
        return np.asarray(self.app.trace.output(names[names.index(name) - 1]))

    @staticmethod
    def find(lines: list[str], pattern: str) -> re.Match | None:
        rx = re.compile(pattern)
        for line in lines:
            m = rx.search(line)
            if m:
                return m
        return None

    # -- conv ----------------------------------------------------------------------------------------
    def conv(self, m: re.Match, lines: list[str]) -> None:
        name, filt, row, col = m.group(1), *map(int, m.groups()[1:])
        layer = self.layer_obj(name)
        kernel = layer.weights["kernel"]
        kh, kw, cin, _ = kernel.shape
        sh, sw = layer.strides
        source = self.layer_input(name)
        h, w = source.shape[:2]
        top, left = (same_padding(h, kh, sh)[0], same_padding(w, kw, sw)[0]) if layer.padding == "same" else (0, 0)
        # channel sums: from the Σ products line (cin ≤ 4) or the listing (cin > 4)
        eq = self.find(lines, r"^Σ products = (.*) = (" + NUMBER + r")$")
        if eq is None:
            return self.fail("no 'Σ products = …' line")
        total = eq.group(2)
        sums: dict[int, str] = {}
        if cin <= 4:
            # `-0.4086 + 0.0166 − 0.2020`: each term after the first takes its sign from the operator
            parts = re.split(r" ([+−]) ", eq.group(1).split(" = ")[-1])
            sums = {0: parts[0]}
            for k in range(1, len(parts) // 2 + 1):
                op, mag = parts[2 * k - 1], parts[2 * k]
                sums[k] = ("-" if op == MINUS else "+") + mag
            if len(sums) != cin:
                self.fail(f"Σ products lists {len(sums)} channel sums, the layer has {cin} channels")
        else:
            listing = re.findall(r"\bch(\d+) ([+-]\d+\.\d{4})\b", "\n".join(lines))
            sums = {int(k): v for k, v in listing}
            if sorted(sums) != list(range(cin)):
                self.fail(f"channel sums listed for {sorted(sums)}, the layer has {cin} channels")
            else:
                iv = exact(0)
                for k in range(cin):
                    iv = iv + printed(sums[k])
                self.interval(iv, total, f"Σ of the {cin} listed channel sums", "channel sums")
        # the grids and each channel's Σ of products
        for k in range(min(cin, 3)):
            grids = self.conv_grids(lines, k, kh, kw)
            if grids is None:
                self.fail(f"cannot read the patch × kernel = products grids of ch{k}")
                continue
            patch, kern, prods = grids
            s = self.find(lines, rf"^ch{k}: Σ of these {kh * kw} products = ({NUMBER})$")
            if s is None:
                self.fail(f"no 'ch{k}: Σ of these {kh * kw} products' line")
                continue
            acc = exact(0)
            for i in range(kh):
                for j in range(kw):
                    # a padding cell shows `pad` (it holds 0), or a zero
                    x = exact(0) if patch[i][j] == "pad" else printed(patch[i][j])
                    self.interval(x * printed(kern[i][j]), prods[i][j],
                                  f"ch{k} cell ({i},{j}): {patch[i][j]} × {kern[i][j]}", "grid product")
                    acc = acc + printed(prods[i][j])
                    self.contains(kern[i][j], kernel[i, j, k, filt], f"kernel ch{k} cell ({i},{j}) of filter {filt}")
                    r, c = row * sh - top + i, col * sw - left + j
                    if 0 <= r < h and 0 <= c < w:
                        if patch[i][j] == "pad":
                            self.fail(f"patch ch{k} cell ({i},{j}) shows pad, but it is input ({r},{c})")
                        else:
                            self.contains(patch[i][j], source[r, c, k], f"patch ch{k} cell ({i},{j}) = input ({r},{c})")
                    elif patch[i][j] not in ("pad", "+0.000", "-0.000"):
                        self.fail(f"patch ch{k} cell ({i},{j}) is zero padding but shows {patch[i][j]}")
                    else:
                        self.ok("padding cell")
            self.interval(acc, s.group(1), f"ch{k}: Σ of the printed products", "grid sum")
            if k in sums:
                self.same(s.group(1), sums[k], f"ch{k} sum under the grid vs in the Σ products line/listing")

    @staticmethod
    def conv_grids(lines: list[str], k: int, kh: int, kw: int):
        """(patch, kernel, products) as kh×kw string grids, side by side or stacked."""
        try:
            start = next(i for i, line in enumerate(lines) if line.startswith(f"patch ch{k}"))
            stop = next(i for i, line in enumerate(lines) if line.startswith(f"ch{k}: Σ of these"))
        except StopIteration:
            return None
        cell = re.compile(r"[+-]\d+\.\d{3}\b|\bpad\b")
        if f"× kernel ch{k}" in lines[start]:  # side by side: one row holds the three grids' rows
            rows = [cell.findall(line) for line in lines[start + 1:stop]]
            rows = [r for r in rows if r]
            if len(rows) != kh or any(len(r) != 3 * kw for r in rows):
                return None
            return tuple([r[g * kw:(g + 1) * kw] for r in rows] for g in range(3))
        grids, current = [], []
        for line in lines[start + 1:stop]:
            if line.startswith((f"× kernel ch{k}", f"= products ch{k}")):
                grids.append(current)
                current = []
            elif cell.findall(line):
                current.append(cell.findall(line))
        grids.append(current)
        if len(grids) != 3 or any(len(g) != kh or any(len(r) != kw for r in g) for g in grids):
            return None
        return tuple(grids)

    # -- pooling -------------------------------------------------------------------------------------
    def pool(self, m: re.Match, lines: list[str]) -> None:
        name, ch, row, col = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4))
        mode, ph, pw = m.group(5), int(m.group(6)), int(m.group(7))
        layer = self.layer_obj(name)
        sh, sw = layer.strides
        source = self.layer_input(name)
        h, w = source.shape[:2]
        top, left = ((same_padding(h, ph, sh)[0], same_padding(w, pw, sw)[0])
                     if layer.config.get("padding", "valid") == "same" else (0, 0))
        try:
            start = next(i for i, line in enumerate(lines) if line.startswith("window:"))
        except StopIteration:
            return self.fail("no 'window:' grid")
        cell = re.compile(r"[+-]\d+\.\d{4}\b|\bpad\b")
        grid = [cell.findall(line)[:pw] for line in lines[start + 1:start + 1 + ph]]
        if any(len(r) != pw for r in grid):
            return self.fail(f"cannot read the {ph}×{pw} window grid: {grid}")
        real = []
        for i in range(ph):
            for j in range(pw):
                r, c = row * sh - top + i, col * sw - left + j
                inside = 0 <= r < h and 0 <= c < w
                if grid[i][j] == "pad":
                    if inside:
                        self.fail(f"window cell ({i},{j}) shows pad inside the map")
                    else:
                        self.ok("padding cell")
                    continue
                if not inside:
                    self.fail(f"window cell ({i},{j}) is padding but shows {grid[i][j]}")
                    continue
                self.contains(grid[i][j], source[r, c, ch], f"window cell ({i},{j}) = input ({r},{c}) ch{ch}")
                real.append(grid[i][j])
        pads = sum(v == "pad" for r in grid for v in r)
        note = self.find(lines, r"^(\d+) window cells are padding")
        if (int(note.group(1)) if note else 0) != pads:
            self.fail(f"{pads} pad cells in the window, the note says {note.group(1) if note else 0}")
        if mode == "max":
            eq = self.find(lines, r"^max\((.*)\) = (" + NUMBER + ")")
            winner = self.find(lines, r"the winner sits at window cell \(row (\d+), col (\d+)\)")  # optional
            if eq is None:
                return self.fail("no max(…) line")
            if winner is not None:
                self.same(grid[int(winner.group(1))][int(winner.group(2))], eq.group(2), "the winner cell vs the max")
        else:
            eq = self.find(lines, r"^\((.*)\) / (\d+) = (" + NUMBER + ")")
            if eq is None:
                return self.fail("no (… ) / n line")
            if int(eq.group(2)) != len(real):
                self.fail(f"average over {eq.group(2)} cells, the window has {len(real)} real cells")
        listed = [float(v) for v in re.findall(NUMBER, eq.group(1).replace(f"{MINUS} ", "-").replace("+ ", "+"))]
        if listed != [float(v) for v in real]:
            self.fail(f"the equation lists {listed}, the window's real cells are {real}")
        else:
            self.ok("operand")

    # -- dense -----------------------------------------------------------------------------------------
    def dense(self, m: re.Match, lines: list[str]) -> None:
        name, unit, act = m.group(1), int(m.group(2)), m.group(3)
        layer = self.layer_obj(name)
        x = self.layer_input(name).reshape(-1)
        kernel = layer.weights["kernel"]
        top = self.find(lines, rf"^Σ x·w = the top (\d+) \+ the other (\d+) = ({NUMBER}) [+{MINUS}] \d+\.\d+ "
                               rf"= ({NUMBER})$")
        zline = self.find(lines, rf"^z = Σ x·w \+ bias = ({NUMBER}) [+{MINUS}] (\d+\.\d+) = ({NUMBER})$")
        above = self.find(lines, rf"^Σ of the (\d+) above = ({NUMBER})$")  # optional
        if not (top and zline):
            return self.fail("missing the 'Σ x·w = …' or the 'z = …' line")
        k, other = int(top.group(1)), int(top.group(2))
        if k + other != x.size:
            self.fail(f"top {k} + other {other} ≠ {x.size} inputs")
        # the largest x·w: `#38   +0.6507   #26   +0.5895 …`, or a table of `input #   x·w` rows
        rows = [r for line in lines for r in re.finditer(rf"(?:^|\s)#(\d+)\s+({NUMBER})", line)]
        if not rows:
            rows = [r for r in (re.match(rf"^(\d+)\s+({NUMBER})$", line) for line in lines) if r]
        if len(rows) != k or (above is not None and int(above.group(1)) != k):
            self.fail(f"{len(rows)} largest x·w are listed, the equations say {k}")
        acc = exact(0)
        for r in rows:
            idx = int(r.group(1))
            self.contains(r.group(2), np.float32(x[idx]) * np.float32(kernel[idx, unit]), f"x·w of input {idx}")
            acc = acc + printed(r.group(2))
        mags = [abs(float(r.group(2))) for r in rows]
        if any(a < b - 1e-4 for a, b in zip(mags, mags[1:])):
            self.fail(f"the table is not sorted by |x·w|: {mags}")
        self.interval(acc, top.group(3), f"Σ of the {k} table rows vs the top {k} in 'Σ x·w'", "table sum")
        if above is not None:
            self.same(top.group(3), above.group(2), "top-k sum in 'Σ x·w' vs under the table")
        self.same(top.group(4), zline.group(1), "Σ x·w vs the z line")
        bias = layer.weights["bias"][unit] if "bias" in layer.weights else 0.0
        self.contains(("-" if f"{MINUS} {zline.group(2)}" in zline.group(0) else "+") + zline.group(2), bias,
                      f"bias of unit {unit}")
        self.dense_z[(name, unit)] = zline.group(3)
        out = self.find(lines, rf"^out = .* = ({NUMBER})(\s{{3}}.*)?$")
        if act == "softmax":
            if out is not None:
                self.fail("a softmax unit prints an activation line")
        elif out is None:
            self.fail("no 'out = …' line")
        elif act == "linear":
            self.same(out.group(1), zline.group(3), "linear out vs z")
        else:
            arg = self.find(lines, rf"^out = \w+\(z\) = \w+\(({NUMBER})\) = ")
            if arg is None:
                self.fail(f"the {act} line does not show its argument")
            else:
                self.same(arg.group(1), zline.group(3), "activation argument vs z")

    # -- softmax -------------------------------------------------------------------------------------
    def softmax(self, m: re.Match, lines: list[str]) -> None:
        name, n, k = m.group(1), int(m.group(2)), int(m.group(3))
        num = r"[+-]?\d+\.\d{4}"
        rows = [re.match(rf"^(\d+) .*?\s({num})\s+({num})\s+({num})(\s|$)", line) for line in lines]
        rows = [r for r in rows if r]
        if [int(r.group(1)) for r in rows] != list(range(n)):
            return self.fail(f"the softmax table rows are {[r.group(1) for r in rows]}")
        logits = [r.group(2) for r in rows]
        exps = [r.group(3) for r in rows]
        probs = [r.group(4) for r in rows]
        zmax = iv_max([printed(z) for z in logits])
        total = self.find(lines, rf"^Σ exp(?: \(the column below\))? = .*?({num})$")
        if total is None:
            return self.fail("no Σ exp line")
        column = exact(0)
        for i in range(n):
            self.interval(FUNCTIONS["exp"](printed(logits[i]) - zmax), exps[i], f"class {i}: exp(z − max z)",
                          "softmax table")
            self.interval(printed(exps[i]) / printed(total.group(1)), probs[i], f"class {i}: p = exp / Σ exp",
                          "softmax table")
            column = column + printed(exps[i])
            if (name, i) in self.dense_z:
                self.same(self.dense_z[(name, i)], logits[i], f"class {i}: logit vs unit {i}'s z")
        self.interval(column, total.group(1), "Σ of the exp column", "softmax table")
        psum = exact(0)
        for p in probs:
            psum = psum + printed(p)
        if psum.lo <= 1 <= psum.hi:
            self.ok("softmax table")
        else:
            self.fail(f"the printed probabilities sum to {psum}, not 1")
        pline = self.find(lines, rf"^p = (?:exp\(z − z_max\) / Σ exp = )?"  # the symbolic part: wide screens
                                 rf"exp\(({num}) ([+{MINUS}] \d+\.\d{{4}})\) / ({num}) = ({num}) / ({num}) = ({num})")
        if pline is None:
            return self.fail("no complete p = … line")
        self.same(pline.group(1), logits[k], f"the p line's z vs class {k}'s logit")
        minus_zmax = pline.group(2).replace(f"{MINUS} ", "-").replace("+ ", "+")
        if (-printed(minus_zmax)).meets(zmax):
            self.ok("same value")
        else:
            self.fail(f"the p line's z_max {-printed(minus_zmax)} vs the largest logit {zmax}")
        self.same(pline.group(4), exps[k], f"the p line's exp vs class {k}'s row")
        self.same(pline.group(6), probs[k], f"the p line's p vs class {k}'s row")
        for g in (3, 5):
            self.same(pline.group(g), total.group(1), "the p line's Σ exp")
        best = self.find(lines, r"^the prediction: class (\d+) ")  # optional
        top = max(range(n), key=lambda i: float(probs[i]))
        if best is not None and printed(probs[int(best.group(1))]).hi < printed(probs[top]).lo:
            self.fail(f"the prediction line names class {best.group(1)}, the largest p is class {top}'s")

    # -- recurrent ------------------------------------------------------------------------------------
    def recurrent(self, m: re.Match, lines: list[str]) -> None:
        name, kind, direction = m.group(1), m.group(2), m.group(3)
        time, unit, last_unit = (int(g) for g in m.groups()[3:])
        self.units[name] = last_unit + 1
        key = (name, direction, time, unit)
        num = NUMBER
        # the h_prev·U term of each pre-activation sum `(x·W + h_prev·U + b)`, for the first-step check
        pre_sum = rf"^\S+ = .*?\(({num}) ([+{MINUS}]) (\d+\.\d{{4}}) [+{MINUS}] \d+\.\d{{4}}\)"
        h_parts = [p for line in lines for p in re.findall(pre_sum, line)]
        if any("is masked (padding)" in line for line in lines):
            h = self.find(lines, rf"^h = h_prev = ({num})$")
            c = self.find(lines, rf"^c = c_prev = ({num})$")
            if h is None or (kind == "LSTM") != (c is not None):
                return self.fail("a masked step without its 'h = h_prev' (and 'c = c_prev') lines")
            self.states[key] = {"h": h.group(1), "h_prev": h.group(1)}
            if c is not None:
                self.states[key].update(c=c.group(1), c_prev=c.group(1))
            return
        if not h_parts:
            return self.fail("no pre-activation sum (x·W + h_prev·U + b) on a recurrent step")
        h_part = [("-" if sign == MINUS else "+") + mag for _, sign, mag in h_parts]
        if kind == "SimpleRNN":
            h = self.find(lines, rf"^h = .* = ({num})$")
            if h is None:
                return self.fail("no h line")
            self.states[key] = {"h": h.group(1), "h_part": h_part}
            return
        gates = {}
        for g in "ifgo":
            line = self.find(lines, rf"^{g} = .* = ({num})$")
            if line is None:
                return self.fail(f"no {g} line")
            gates[g] = line.group(1)
        factor = rf"\(?({num})\)?"
        cline = self.find(lines, rf"^c = f·c_prev \+ i·g = {factor}·{factor} \+ {factor}·{factor} = ({num})$")
        hline = self.find(lines, rf"^h = o·tanh\(c\) = {factor}·tanh\(({num})\) = ({num})$")
        if cline is None or hline is None:
            return self.fail("no complete c or h line")
        self.same(cline.group(1), gates["f"], "f in the c line vs the f gate")
        self.same(cline.group(3), gates["i"], "i in the c line vs the i gate")
        self.same(cline.group(4), gates["g"], "g in the c line vs the g gate")
        self.same(hline.group(1), gates["o"], "o in the h line vs the o gate")
        self.same(hline.group(2), cline.group(5), "c in the h line vs the c line")
        self.states[key] = {"c_prev": cline.group(2), "c": cline.group(5), "h": hline.group(3), "h_part": h_part}

    def merge(self, m: re.Match, lines: list[str]) -> None:
        name, mode = m.group(1), m.group(2)
        line = self.find(lines, rf"^merged\[(\d+)\] = (.*) = ({NUMBER})(\s{{3}}.*)?$")
        if line is None:
            return self.fail("no merged[u] line")
        self.merges.append((name, mode, int(line.group(1)), line.group(2), line.group(3)))

    def embedding(self, m: re.Match, lines: list[str]) -> None:
        name, position, row = m.group(1), int(m.group(2)), int(m.group(3))
        table = self.layer_obj(name).weights["embeddings"]
        ids = np.asarray(self.layer_input(name)).reshape(-1)
        if ids[position] != row:
            self.fail(f"position {position} reads row {row}, the token id is {ids[position]}")
        values = [v for line in lines for v in re.findall(r"[+-]\d+\.\d{4}\b", line) if not line.startswith(name)]
        if not values:
            self.fail("no vector shown")
        for j, v in enumerate(values):
            self.contains(v, table[row, j], f"embedding row {row} element {j}")

    def flatten(self, m: re.Match, lines: list[str]) -> None:
        h, w, c, n = (int(g) for g in m.groups()[1:])
        if h * w * c != n:
            self.fail(f"({h}, {w}, {c}) does not hold {n} values")
        for line in lines:
            f = re.match(r"^flat\[(\d+)\] ← cell \((\d+), (\d+), (\d+)\)$", line)
            if f:
                k, r, cc, ch = map(int, f.groups())
                if k == (r * w + cc) * c + ch:
                    self.ok("flatten index")
                else:
                    cell = ((k // c) // w, (k // c) % w, k % c)
                    self.fail(f"flat[{k}] is cell {cell}, the screen says {(r, cc, ch)}")

    def summary(self, lines: list[str]) -> None:
        stats = self.find(lines, rf"^min ({NUMBER})  max ({NUMBER})  mean ({NUMBER})$")
        if stats is None:
            return
        out = np.asarray(self.app.trace.output(self.app.layer[0]))
        for text, value, what in zip(stats.groups(), (np.min(out), np.max(out), np.mean(out)),
                                     ("min", "max", "mean")):
            self.contains(text, value, f"summary {what}")

    # -- across steps ------------------------------------------------------------------------------------
    def finish(self) -> None:
        """Across steps: `c_prev`/`h_prev` against the previous token's printed states (zero before the
        first token: then h_prev·U is 0 too); the merge's operands against each sweep's last h."""
        self.where = "across steps"
        n = self.n_time()
        zero = {"c": "0.0000", "h": "0.0000"}
        for (name, direction, time, unit), st in self.states.items():
            prev_time = time - 1 if direction == "forward" else time + 1
            prev = self.states.get((name, direction, prev_time, unit)) if 0 <= prev_time < n else zero
            if prev is None:
                continue
            for state in ("c", "h"):
                if f"{state}_prev" in st and state in prev:
                    self.same(st[f"{state}_prev"], prev[state], f"{name} {direction} token {time} unit {unit}: "
                                                                    f"{state}_prev vs {state} of token {prev_time}")
            if prev is zero:
                for part in st.get("h_part", []):
                    self.same(part, "0.0000", f"{name} {direction} token {time}: h_prev·U before the first token")

        def final(name: str, direction: str, unit: int) -> str | None:
            st = self.states.get((name, direction, n - 1 if direction == "forward" else 0, unit))
            return None if st is None else st["h"]

        for name, mode, u, middle, value in self.merges:
            units = self.units.get(name)
            if mode == "concat":
                half = re.match(r"^(forward|backward)\[(\d+)\]$", middle)
                if half is None:
                    self.fail(f"{name}: merged[{u}] = {middle} names no half")
                    continue
                if units is not None and (half.group(1), int(half.group(2))) != (
                        "forward" if u < units else "backward", u % units):
                    self.fail(f"{name}: merged[{u}] = {middle}, but unit {u} of the concat is "
                              f"{'forward' if u < units else 'backward'}[{u % units}]")
                h = final(name, half.group(1), int(half.group(2)))
                if h is not None:
                    self.same(value, h, f"{name}: merged[{u}] vs the {half.group(1)} sweep's last h[{half.group(2)}]")
            else:
                operands = re.findall(NUMBER, middle)
                if len(operands) != 2:
                    self.fail(f"{name}: merged[{u}] = {middle} does not show both halves")
                for direction, operand in zip(("forward", "backward"), operands):
                    h = final(name, direction, u)
                    if h is not None:
                        self.same(operand, h, f"{name}: merged[{u}]'s {direction} operand vs that sweep's last h[{u}]")

    def n_time(self) -> int:
        first, cls = self.app.trace.layers[0]
        return int(np.asarray(self.app.trace.output(first)).size)


# =================================================================================================
# Driving the app
# =================================================================================================
KEY_NAMES = {" ": "space", "[": "left_square_bracket", "]": "right_square_bracket", "<": "less_than_sign",
             ">": "greater_than_sign"}


def jump(text: str) -> list[str]:
    return ["j", *[KEY_NAMES.get(ch, ch) for ch in text], "enter"]


async def tour(app, size, plan, name: str = "") -> Checker:
    """Run `plan` (a list of key groups; each group is pressed, then the screen is checked)."""
    checker = Checker(app, size, name)
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        checker.observe("start")
        for keys in plan:
            keys = [keys] if isinstance(keys, str) else list(keys)
            await pilot.press(*keys)
            await pilot.pause()
            checker.observe(" ".join(keys))
    checker.finish()
    return checker


def repeat(keys, n: int) -> list:
    return [keys] * n


NEXT_LAYER = "right_square_bracket"

CNN_PLAN = [
    NEXT_LAYER,                                      # conv2d_1: row 0, col 0 (top-left corner, padded)
    *repeat("n", 7),                                 # along the top border
    "down",                                          # the right border
    jump("7 7 0"), "left", "up",                     # the bottom-right corner and its neighbours
    jump("7 0 1"), "right",                          # the bottom-left corner, filter 1
    ["up"] * 3, ["right"] * 3,                       # inside
    "greater_than_sign", "greater_than_sign", "less_than_sign",  # filters 2, 3, 2
    NEXT_LAYER, *repeat("n", 4), "greater_than_sign", "down", "right",  # max pooling
    NEXT_LAYER,                                      # flatten
    NEXT_LAYER, "down", "down",                      # dense units 0–2
    "n",                                             # the softmax step
    "down", "down", "up",                            # its selected class
]

STRIDED_PLAN = [
    NEXT_LAYER, "n", "down",                                   # conv_a (3 channels, 6 filters)
    NEXT_LAYER,                                                # conv_b: stride 2 over 6 channels, padded
    *repeat("n", 4), "down", ["down"] * 3, "left",             # top border, right border, corner
    "greater_than_sign", jump("2 2 3"), "up",                  # filters 1 and 3, inside
    NEXT_LAYER, "n", "n", "down", "down", "left", "greater_than_sign",  # average pooling, padded windows
    NEXT_LAYER,                                                # flatten
    NEXT_LAYER, "down", "down", ["down"] * 3, "down",         # dense relu units
    NEXT_LAYER, ["n"] * 5,                                     # the softmax step
    "down", "down", "down", "down", "up",
]

LSTM_PLAN = [
    NEXT_LAYER, *repeat("n", 5),                                    # embedding lookups, padding included
    NEXT_LAYER, *repeat("right", 5),                                # forward sweep, unit 0
    "down", *repeat("left", 5), jump("unit 2"), *repeat("right", 5),  # units 1 and 2
    "n",                                                            # the backward sweep starts (masked)
    *repeat("left", 5), "up", *repeat("right", 5), "up", *repeat("left", 5),
    "n", *repeat("down", 5),                                        # the merge, units 0–5
    NEXT_LAYER, "down", "down", "n", "down", "down",                # dense units and the softmax
]

RNN_PLAN = [
    NEXT_LAYER, *repeat("n", 6),                                     # embedding
    NEXT_LAYER, *repeat("right", 6), "down", *repeat("left", 6),     # SimpleRNN units 0–1
    ["down"] * 2, *repeat("right", 3),                               # unit 3
    NEXT_LAYER, *repeat("down", 5),                                  # dense relu
    NEXT_LAYER, ["n"] * 5, *repeat("down", 4),                       # softmax over 5 classes
]

#: the forward sweep's last token (masked) and the backward sweep's last token, every unit, then the merge
BIRNN_PLAN = [[NEXT_LAYER, NEXT_LAYER], ["right"] * 4, "down", "down", "n", ["left"] * 4, "up", "up", "n",
              "down", "down"]


TOURS = [("tiny_cnn", cnn_app, CNN_PLAN), ("strided_cnn", strided_cnn_app, STRIDED_PLAN),
         ("tiny_lstm", lstm_app, LSTM_PLAN), ("scratch_rnn", rnn_app, RNN_PLAN),
         *[(f"birnn_{mode}", lambda mode=mode: birnn_app(mode), BIRNN_PLAN) for mode in ("sum", "ave")]]

EXPECTED_VIEWS = {"conv", "pool", "dense", "softmax", "recurrent", "merge", "embedding", "flatten", "summary"}


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_every_equation_on_screen_is_true_to_its_printed_digits(size):
    async def run():
        return [await tour(make(), size, plan, name) for name, make, plan in TOURS]

    checkers = asyncio.run(run())
    failures = [f for c in checkers for f in c.failures]
    lines = set().union(*(c.equation_lines for c in checkers))
    views = sum((c.views for c in checkers), Counter())
    kinds = sum((c.kinds for c in checkers), Counter())
    print(f"\n{size[0]}×{size[1]}: {len(lines)} distinct equation lines, {sum(c.relations for c in checkers)} "
          f"relations checked {dict(kinds)}; steps per view {dict(views)}")
    assert not failures, f"{len(failures)} problems on screen:\n" + "\n".join(dict.fromkeys(failures))
    assert EXPECTED_VIEWS <= set(views), f"views not reached: {EXPECTED_VIEWS - set(views)}"
    assert len(lines) >= 250, f"only {len(lines)} distinct equation lines were checked"
    assert kinds["grid product"] >= 300 and kinds["softmax table"] >= 20 and kinds["same value"] >= 200


# =================================================================================================
# The checker can fail
# =================================================================================================
def plant(line: str) -> str:
    """The same line with the last digit of its result (its last number) changed by 3."""
    m = list(re.finditer(r"\d", equation_part(line)))[-1]
    return line[:m.start()] + str((int(m.group()) + 3) % 10) + line[m.end():]


def test_the_checker_reports_a_planted_wrong_digit():
    async def run():
        app = lstm_app()
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press(NEXT_LAYER, NEXT_LAYER, "right", "right")
            await pilot.pause()
            return app, panel_lines(app), screen_lines(app)

    app, panel, screen = asyncio.run(run())
    lines = [line.strip() for line in panel]
    rendered = [line for line in lines if " = " in line and check_equation(line)[0] >= 2]
    assert len(rendered) >= 6 and all(check_equation(line)[1] is None for line in rendered), rendered
    assert all(any(line in row for row in screen) for line in rendered)
    # one wrong digit in the result of any of them is reported as a false equation
    for line in rendered:
        n, error = check_equation(plant(line))
        assert error is not None and error.startswith("FALSE"), (plant(line), error)
    # a wrong operand inside the chain too: `σ(-0.3058 + …)` → `σ(-0.4058 + …)`
    gate = next(line for line in rendered if line.startswith("i = "))
    wrong = re.sub(r"σ\(([+-])(\d)\.(\d)", lambda m: f"σ({m.group(1)}{m.group(2)}.{(int(m.group(3)) + 1) % 10}",
                   gate, count=1)
    assert wrong != gate and check_equation(wrong)[1].startswith("FALSE")
    # an equation cut by wrapping is reported
    cline = next(line for line in rendered if line.startswith("c = "))
    head, tail = cline.rsplit(" = ", 1)
    assert wrap_problem(head + " =") and wrap_problem("= " + tail)
    assert wrap_problem(cline.split(" + ")[0] + " +") and wrap_problem(gate[:gate.index(" ", gate.index("σ("))])
    # the structural checks catch an operand copied wrongly from one line into another
    f_gate = re.search(r" = (\S+)$", next(line for line in lines if line.startswith("f = "))).group(1)
    wrong_f = "0.9999" if f_gate != "0.9999" else "0.1111"
    planted = [line.replace(f"= {f_gate}·", f"= {wrong_f}·", 1) if line.startswith("c = f·") else line
               for line in lines]
    checker = Checker(app, (120, 40))
    checker.recurrent(RECURRENT_TITLE.match(planted[0]), planted)
    assert any("f in the c line" in f for f in checker.failures), checker.failures
    # while the lines as rendered pass the same checks
    checker = Checker(app, (120, 40))
    checker.recurrent(RECURRENT_TITLE.match(lines[0]), lines)
    assert not checker.failures, checker.failures
