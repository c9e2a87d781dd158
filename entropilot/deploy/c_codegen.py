"""Lower an exported policy's ONNX graph to one C99 function body: each node becomes a loop over per-sample float
vectors, the weights ``static const`` arrays; an op it does not know is refused by name. Ground side (needs onnx).

The graph is read per sample: every runtime tensor is [batch, n] and the code computes one row of it. Constants
broadcast as ONNX does along the feature axis (a scalar, [n] or [1, n]). Arithmetic is the graph's, in float32, in
an order fixed by the code (no reassociation), so results depend only on the compiler's float semantics: with
``-ffp-contract=off`` and without ``-ffast-math`` they are the same bits at any optimization level.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["CodegenError", "FunctionBody", "SUPPORTED_OPS", "c_float", "lower_graph"]


class CodegenError(ValueError):
    """The graph cannot be lowered to C: an unknown op, or a known one used in a way the generator does not cover."""


# Eigen's rational approximation of tanh, clamped to [-9, 9]: what onnxruntime's CPU Tanh computes (MLAS tanh.cpp),
# accurate to 3.4e-7 in float32, with no libm call (so the same bits on a host and a Cortex-M4F).
TANH_HELPER = """\
static float ep_tanh(float x)
{
    /* Eigen's rational approximation, as in onnxruntime's MLAS tanh.cpp; a NaN passes through. */
    x = x < -9.0f ? -9.0f : (x > 9.0f ? 9.0f : x);
    const float x2 = x * x;
    float p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
    p = p * x2 + -8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    p = p * x;
    float q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    return p / q;
}
"""


BLOCK = 8  # outputs a dense layer computes at once: their sums stay in registers (a Cortex-M4F has 32 of them)


def _dense_helper(block: int) -> str:
    first = ", ".join(f"a{r} = x[0] * w[0][{r}]" for r in range(block))
    body = "\n".join(f"            a{r} += xi * w[i][{r}];" for r in range(block))
    stores = "\n".join(f"        y[{r}] = a{r} + b[{r}];" for r in range(block))
    return f"""\
static void ep_dense(const float *x, int k, const float (*w)[{block}], const float *b, int blocks, float *y)
{{
    /* {block} outputs at a time; each sums its k products in input order, then adds its bias. */
    for (int j = 0; j < blocks; ++j, w += k, b += {block}, y += {block}) {{
        float {first};
        for (int i = 1; i < k; ++i) {{
            const float xi = x[i];
{body}
        }}
{stores}
    }}
}}
"""


DENSE_HELPER = _dense_helper(BLOCK)


@dataclass(frozen=True)
class _Value:
    """A runtime tensor's row: ``size`` floats of C array ``buffer`` from ``offset`` (Slice and Split make views)."""

    buffer: str
    offset: int
    size: int

    def at(self, index: str) -> str:
        return f"{self.buffer}[{index} + {self.offset}]" if self.offset else f"{self.buffer}[{index}]"


@dataclass
class FunctionBody:
    """What the generated ``entropilot_policy`` consists of: arrays at file scope, helpers, local buffers, code."""

    constants: list[str] = field(default_factory=list)  # static const arrays
    helpers: list[str] = field(default_factory=list)  # static functions
    buffers: dict[str, int] = field(default_factory=dict)  # static float scratch buffer name -> size
    statements: list[str] = field(default_factory=list)
    ops: list[str] = field(default_factory=list)  # op types, in graph order
    parameters: int = 0  # float constants stored
    needs_math_h: bool = False  # expf (Elu, Sigmoid)


def c_float(value: float) -> str:
    """A float32 as a C literal that reads back to the same bits (9 significant digits)."""
    value = float(np.float32(value))
    if not np.isfinite(value):
        raise CodegenError(f"constant {value} is not finite; the C export takes finite constants only")
    text = f"{value:.9g}"
    if not any(c in text for c in ".en"):
        text += ".0"
    return text + "f"


def lower_graph(model, input_name: str, output_name: str, input_size: int, output_size: int) -> FunctionBody:
    """The C for ``model`` (an onnx ModelProto) computing ``action`` (``output_size`` floats) from ``obs``
    (``input_size`` floats). CodegenError names every unsupported op before anything is generated."""
    graph = model.graph
    unknown = sorted({n.op_type for n in graph.node if n.domain not in ("", "ai.onnx") or n.op_type not in _OPS})
    if unknown:
        raise CodegenError(
            f"the graph uses op(s) {unknown} that the C export does not generate; supported: {list(SUPPORTED_OPS)}"
        )
    return _Lowering(model, input_name, input_size).run(output_name, output_size)


class _Lowering:
    def __init__(self, model, input_name: str, input_size: int):
        from onnx import numpy_helper

        self.body = FunctionBody()
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.values: dict[str, _Value] = {input_name: _Value("obs", 0, input_size)}
        self.nodes = list(model.graph.node)
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.refs: dict[str, int] = {"obs": 1}  # buffer -> live values viewing it
        self.free: list[str] = []
        self.last_use: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            for name in node.input:
                self.last_use[name] = i
        self.index = 0

    def run(self, output_name: str, output_size: int) -> FunctionBody:
        self.last_use[output_name] = len(self.nodes)
        for index, node in enumerate(self.nodes):
            self.index = index
            self.body.ops.append(node.op_type)
            _OPS[node.op_type](self, node)
            self._release_inputs(node)
        out = self.values.get(output_name)
        if out is None:
            raise CodegenError(f"the graph output {output_name!r} is a constant or missing; nothing to compute")
        if out.size != output_size:
            raise CodegenError(f"the graph computes {out.size} outputs per sample; expected {output_size}")
        self._loop(out.size, f"action[i] = {out.at('i')};", "the action")
        return self.body

    # ---- operands ---------------------------------------------------------------------
    def value(self, node, k: int) -> _Value:
        name = node.input[k]
        if name not in self.values:
            raise CodegenError(f"{self.describe(node)}: input {name!r} must be computed from the observation")
        return self.values[name]

    def const(self, node, k: int) -> np.ndarray | None:
        if k >= len(node.input) or not node.input[k]:
            return None
        return self.consts.get(node.input[k])

    def is_const(self, node, k: int) -> bool:
        return node.input[k] in self.consts

    def attr(self, node, name: str, default=None):
        from onnx import helper

        for a in node.attribute:
            if a.name == name:
                return helper.get_attribute_value(a)
        return default

    def feature_const(self, node, k: int, size: int) -> str:
        """A constant operand broadcast over ``size`` features -> its C expression at index i."""
        c = np.asarray(self.const(node, k), dtype=np.float32)
        if c.size == 1 and c.ndim <= 2:
            return c_float(c.reshape(-1)[0])
        if c.shape in ((size,), (1, size)):
            return f"{self.array(c.reshape(size), node, k)}[i]"
        raise CodegenError(
            f"{self.describe(node)}: constant {node.input[k]!r} of shape {list(c.shape)} does not "
            f"broadcast over the {size} features of a sample (allowed: a scalar, [{size}] or [1, {size}])"
        )

    def array(self, values: np.ndarray, node, k: int, note: str = "") -> str:
        """Emit ``values`` (float32, any rank) as a static const array; returns its name."""
        name = f"ep_c{len(self.body.constants)}"
        v = np.asarray(values, dtype=np.float32)
        dims = "".join(f"[{d}]" for d in v.shape)
        self.body.constants.append(
            f"/* {self.describe(node)}: {node.input[k]} {list(v.shape)}{note} */\n"
            f"static const float {name}{dims} = {_initializer(v, '')};"
        )
        self.body.parameters += v.size
        return name

    # ---- buffers ----------------------------------------------------------------------
    def output(self, node, size: int, in_place: int | None = None) -> _Value:
        """A buffer for the node's output: input ``in_place``'s own if that input is a whole buffer that dies here."""
        x = None if in_place is None else self.values[node.input[in_place]]
        if (
            x is not None
            and x.buffer != "obs"
            and x.offset == 0
            and self.body.buffers[x.buffer] >= size
            and self.refs[x.buffer] == 1
            and self.last_use[node.input[in_place]] == self.index
        ):
            buffer = x.buffer
        elif self.free:
            buffer = self.free.pop()
            self.body.buffers[buffer] = max(self.body.buffers[buffer], size)
        else:
            buffer = f"ep_b{len(self.body.buffers)}"
            self.body.buffers[buffer] = size
        return self.bind(node.output[0], _Value(buffer, 0, size))

    def bind(self, name: str, value: _Value) -> _Value:
        self.values[name] = value
        self.refs[value.buffer] = self.refs.get(value.buffer, 0) + 1
        if name not in self.last_use:  # computed but never read: free it after this node
            self.last_use[name] = self.index
        return value

    def _release_inputs(self, node) -> None:
        for name in {*node.input, *node.output}:
            value = self.values.get(name)
            if value is not None and self.last_use.get(name) == self.index:
                del self.values[name]
                self.refs[value.buffer] -= 1
                if self.refs[value.buffer] == 0 and value.buffer != "obs":
                    self.free.append(value.buffer)

    # ---- emission ---------------------------------------------------------------------
    def _loop(self, size: int, statement: str, comment: str) -> None:
        self.body.statements.append(f"/* {comment} */\nfor (int i = 0; i < {size}; ++i) {statement}")

    def describe(self, node) -> str:
        return f"{node.op_type} {node.name or node.output[0]}"

    # ---- ops --------------------------------------------------------------------------
    def dense(self, node, weights: np.ndarray, bias: np.ndarray | None) -> None:
        """y = x W + bias through ``ep_dense``: W ([k, n]) stored in blocks of four outputs ([n/4][k][4], zero-padded)
        whose sums stay in registers; each output adds its k products in input order, then its bias."""
        x = self.value(node, 0)
        k, n = weights.shape
        if k != x.size:
            raise CodegenError(f"{self.describe(node)}: weights take {k} inputs; the sample has {x.size}")
        blocks = -(-n // BLOCK)
        padded = np.zeros((k, BLOCK * blocks), dtype=np.float32)
        padded[:, :n] = weights
        b = np.zeros(BLOCK * blocks, dtype=np.float32)
        if bias is not None:
            b[:n] = np.broadcast_to(np.asarray(bias, dtype=np.float32).reshape(-1), (n,))
        layout = f" in blocks [outputs/{BLOCK}][inputs][{BLOCK}]"
        w_name = self.array(padded.reshape(k, blocks, BLOCK).transpose(1, 0, 2), node, 1, layout)
        b_name = self.array(b, node, 2 if bias is not None else 1, "" if bias is not None else " (no bias: zeros)")
        y = self.output(node, BLOCK * blocks)
        self.values[node.output[0]] = y = _Value(y.buffer, 0, n)  # the padding's outputs are never read
        if DENSE_HELPER not in self.body.helpers:
            self.body.helpers.append(DENSE_HELPER)
        self.body.statements.append(
            f"/* {self.describe(node)}: {k} -> {n} */\n"
            f"ep_dense({self.pointer(x)}, {k}, {w_name}[0], {b_name}, {blocks}, {self.pointer(y)});"
        )

    def pointer(self, value: _Value) -> str:
        return f"{value.buffer} + {value.offset}" if value.offset else value.buffer

    def op_gemm(self, node) -> None:
        if self.attr(node, "transA", 0) or not self.is_const(node, 1):
            raise CodegenError(f"{self.describe(node)}: only x @ W with a constant W (transA = 0) is generated")
        w = np.asarray(self.const(node, 1), dtype=np.float32)
        if self.attr(node, "transB", 0):
            w = w.T
        bias = self.const(node, 2)
        if len(node.input) > 2 and node.input[2] and bias is None:
            raise CodegenError(f"{self.describe(node)}: the bias must be a constant")
        if self.attr(node, "alpha", 1.0) != 1.0 or self.attr(node, "beta", 1.0) != 1.0:
            raise CodegenError(f"{self.describe(node)}: only alpha = beta = 1 (torch.nn.Linear's Gemm) is generated")
        self.dense(node, w, bias)

    def op_matmul(self, node) -> None:
        w = self.const(node, 1)
        if w is None or np.ndim(w) != 2:
            raise CodegenError(f"{self.describe(node)}: only x @ W with a constant 2-D W is generated")
        self.dense(node, np.asarray(w, dtype=np.float32), None)

    def binary(self, node, symbol: str) -> None:
        a_const, b_const = self.is_const(node, 0), self.is_const(node, 1)
        if a_const and b_const:
            raise CodegenError(f"{self.describe(node)}: both operands are constants (fold them before export)")
        if not a_const and not b_const:
            a, b = self.value(node, 0), self.value(node, 1)
            if a.size != b.size and 1 not in (a.size, b.size):
                raise CodegenError(f"{self.describe(node)}: operands of {a.size} and {b.size} features")
            # One feature against many broadcasts it (a heading-frame policy turns rows by one cosine and sine).
            size = max(a.size, b.size)
            a_at, b_at = (v.at("i") if v.size == size else v.at("0") for v in (a, b))
            y = self.output(node, size, in_place=0 if a.size == size else 1)
            self._loop(size, f"{y.at('i')} = {a_at} {symbol} {b_at};", self.describe(node))
            return
        x = self.value(node, 1 if a_const else 0)
        c = self.feature_const(node, 0 if a_const else 1, x.size)
        y = self.output(node, x.size, in_place=1 if a_const else 0)
        expr = f"{c} {symbol} {x.at('i')}" if a_const else f"{x.at('i')} {symbol} {c}"
        self._loop(x.size, f"{y.at('i')} = {expr};", self.describe(node))

    def unary(self, node, expression: Callable[[str], str]) -> None:
        x = self.value(node, 0)
        y = self.output(node, x.size, in_place=0)
        self._loop(x.size, f"{y.at('i')} = {expression(x.at('i'))};", self.describe(node))

    def op_tanh(self, node) -> None:
        if TANH_HELPER not in self.body.helpers:
            self.body.helpers.append(TANH_HELPER)
        self.unary(node, lambda v: f"ep_tanh({v})")

    def op_relu(self, node) -> None:
        self.unary(node, lambda v: f"({v} < 0.0f ? 0.0f : {v})")  # a NaN passes through, as it does in onnxruntime

    def op_leaky_relu(self, node) -> None:
        alpha = c_float(self.attr(node, "alpha", 0.01))
        self.unary(node, lambda v: f"({v} < 0.0f ? {alpha} * {v} : {v})")

    def op_elu(self, node) -> None:
        self.body.needs_math_h = True
        alpha = c_float(self.attr(node, "alpha", 1.0))
        self.unary(node, lambda v: f"({v} < 0.0f ? {alpha} * (expf({v}) - 1.0f) : {v})")

    def op_sigmoid(self, node) -> None:
        self.body.needs_math_h = True
        self.unary(node, lambda v: f"1.0f / (1.0f + expf(-{v}))")

    def op_sqrt(self, node) -> None:
        self.body.needs_math_h = True
        self.unary(node, lambda v: f"sqrtf({v})")

    def op_clip(self, node) -> None:
        if self.opset < 11:
            low, high = self.attr(node, "min", None), self.attr(node, "max", None)
        else:
            for k in (1, 2):
                if k < len(node.input) and node.input[k] and not self.is_const(node, k):
                    raise CodegenError(f"{self.describe(node)}: the bounds must be constants")
            low, high = (None if (c := self.const(node, k)) is None else float(np.asarray(c)) for k in (1, 2))

        # Comparisons, not fminf/fmaxf: a NaN stays NaN for the finiteness checks after the call.
        steps = ["float v = {x};"]
        if high is not None:
            steps.append(f"v = v > {c_float(high)} ? {c_float(high)} : v;")
        if low is not None:
            steps.append(f"v = v < {c_float(low)} ? {c_float(low)} : v;")
        x = self.value(node, 0)
        y = self.output(node, x.size, in_place=0)
        block = " ".join(steps).format(x=x.at("i"))
        self._loop(x.size, f"{{ {block} {y.at('i')} = v; }}", self.describe(node))

    def op_identity(self, node) -> None:
        self.bind(node.output[0], self.value(node, 0))

    def op_constant(self, node) -> None:
        from onnx import numpy_helper

        tensor = self.attr(node, "value")
        if tensor is None:
            floats, ints = self.attr(node, "value_float"), self.attr(node, "value_ints")
            if floats is None and ints is None:
                raise CodegenError(f"{self.describe(node)}: only value, value_float and value_ints are read")
            self.consts[node.output[0]] = np.asarray(floats if floats is not None else ints)
            return
        self.consts[node.output[0]] = numpy_helper.to_array(tensor)

    def feature_axis(self, node, axis: int) -> None:
        if axis not in (1, -1):
            raise CodegenError(f"{self.describe(node)}: axis {axis}; only the feature axis (1 or -1) is generated")

    def op_slice(self, node) -> None:
        x = self.value(node, 0)
        if self.opset >= 10:
            starts, ends, given_axes, given_steps = (self.const(node, k) for k in range(1, 5))
            optional = zip((given_axes, given_steps), node.input[3:5])
            if starts is None or ends is None or any(p is None for p, name in optional if name):
                raise CodegenError(f"{self.describe(node)}: starts, ends, axes and steps must be constants")
            axes = np.arange(len(starts)) if given_axes is None else given_axes
            steps = np.ones(len(starts), dtype=np.int64) if given_steps is None else given_steps
        else:
            starts, ends = self.attr(node, "starts"), self.attr(node, "ends")
            axes, steps = self.attr(node, "axes", [1]), np.ones(1, dtype=np.int64)
        if len(starts) != 1 or list(np.ravel(steps)) != [1]:
            raise CodegenError(f"{self.describe(node)}: only a step-1 slice of the feature axis is generated")
        self.feature_axis(node, int(np.ravel(axes)[0]))
        start, stop, _ = slice(int(np.ravel(starts)[0]), int(np.ravel(ends)[0])).indices(x.size)
        if stop <= start:
            raise CodegenError(f"{self.describe(node)}: empty slice [{start}:{stop}] of {x.size} features")
        self.bind(node.output[0], _Value(x.buffer, x.offset + start, stop - start))

    def op_split(self, node) -> None:
        x = self.value(node, 0)
        self.feature_axis(node, int(self.attr(node, "axis", 0)))
        sizes = self.const(node, 1) if self.opset >= 13 else self.attr(node, "split")
        if sizes is None:
            parts = len(node.output)
            if x.size % parts:
                raise CodegenError(f"{self.describe(node)}: {x.size} features do not split in {parts} equal parts")
            sizes = [x.size // parts] * parts
        offset = x.offset
        for name, size in zip(node.output, np.ravel(sizes).astype(int).tolist()):
            self.bind(name, _Value(x.buffer, offset, size))
            offset += size

    def op_concat(self, node) -> None:
        self.feature_axis(node, int(self.attr(node, "axis", 0)))
        parts = [self.value(node, k) for k in range(len(node.input))]
        y = self.output(node, sum(p.size for p in parts))
        offset = 0
        for part in parts:
            self._loop(part.size, f"{y.buffer}[i + {offset}] = {part.at('i')};", self.describe(node))
            offset += part.size


def _initializer(v: np.ndarray, indent: str) -> str:
    """A C initializer with one brace level per dimension, eight numbers a line."""
    if v.ndim == 1:
        rows = [", ".join(c_float(x) for x in v[i : i + 8]) for i in range(0, len(v), 8)]
        inner = f",\n{indent}    ".join(rows)
        return f"{{{inner}}}" if len(rows) == 1 else f"{{\n{indent}    {inner}\n{indent}}}"
    parts = f",\n{indent}    ".join(_initializer(sub, indent + "    ") for sub in v)
    return f"{{\n{indent}    {parts}\n{indent}}}"


_OPS: dict[str, Callable[[_Lowering, object], None]] = {
    "Gemm": _Lowering.op_gemm,
    "MatMul": _Lowering.op_matmul,
    "Add": lambda self, node: self.binary(node, "+"),
    "Sub": lambda self, node: self.binary(node, "-"),
    "Mul": lambda self, node: self.binary(node, "*"),
    "Div": lambda self, node: self.binary(node, "/"),
    "Tanh": _Lowering.op_tanh,
    "Relu": _Lowering.op_relu,
    "LeakyRelu": _Lowering.op_leaky_relu,
    "Elu": _Lowering.op_elu,
    "Sigmoid": _Lowering.op_sigmoid,
    "Sqrt": _Lowering.op_sqrt,
    "Clip": _Lowering.op_clip,
    "Identity": _Lowering.op_identity,
    "Constant": _Lowering.op_constant,
    "Slice": _Lowering.op_slice,
    "Split": _Lowering.op_split,
    "Concat": _Lowering.op_concat,
}
SUPPORTED_OPS = tuple(_OPS)
