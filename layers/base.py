"""The base class every scratch layer shares: a name, Keras-named weights, a vectorised forward."""
from __future__ import annotations

from typing import Any, Callable, ClassVar, Iterator, Sequence

import numpy as np

from nntrace.layers import activations
from nntrace.layers.errors import InputShapeError, UnsupportedLayerError, WeightMismatchError

Shape = tuple  # a weight shape template: ints, or None where any size fits


def dtype_policy_name(dtype: Any) -> str | None:
    """The name of a Keras layer config's `dtype`: a policy dict's `config.name`, or the string."""
    if isinstance(dtype, dict):
        dtype = (dtype.get("config") or {}).get("name")
    return dtype if isinstance(dtype, str) else None


class Layer:
    """One Keras layer reproduced in NumPy.

    Subclasses set `config_keys` (the Keras constructor arguments they read), define
    `weight_shapes()` (Keras order and names) and `call(x, mask, training)`.
    """

    config_keys: ClassVar[tuple[str, ...]] = ()
    defaults: ClassVar[dict[str, Any]] = {}  # Keras's constructor defaults for those arguments
    supports_masking: ClassVar[bool] = False  # passes an incoming mask on unchanged
    #: Keyword options of the Keras call this layer reproduces (e.g. `use_causal_mask`).
    call_options: ClassVar[tuple[str, ...]] = ()
    #: Names of the tensor arguments of a layer that takes several named ones (query, value, key…);
    #: empty for a layer that takes one tensor or one list of tensors.
    input_names: ClassVar[tuple[str, ...]] = ()
    #: Whether the layer's own work already runs on several cores at once (a Bidirectional
    #: layer's two directions), so that splitting the batch of its model between the cores
    #: gains nothing.
    parallel_inside: ClassVar[bool] = False

    def __init__(self, name: str, **config: Any) -> None:
        self.name = name
        self.config = {**self.defaults, **{k: config[k] for k in self.config_keys if k in config}}
        self.weights: dict[str, np.ndarray] = {}

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict) -> "Layer":
        """Build from a Keras `get_config()` dict (unknown keys are ignored)."""
        cfg = dict(config)
        name = cfg.pop("name", cls.__name__.lower())
        layer = cls(name, **{k: v for k, v in cfg.items() if k in cls.config_keys})
        layer.check_config(cfg)
        return layer

    def check_config(self, config: dict) -> None:
        """Raise UnsupportedLayerError for Keras settings this layer cannot reproduce."""
        if config.get("data_format", "channels_last") not in (None, "channels_last"):
            self.unsupported("only data_format='channels_last' is supported")
        policy = dtype_policy_name(config.get("dtype"))
        if policy is not None and "float16" in policy:  # float16, bfloat16 and their mixed_ policies
            self.unsupported(f"dtype policy '{policy}' computes in {policy.removeprefix('mixed_')}; nntrace computes "
                             "in float32 (supported: float32 and float64 policies)")

    def check_build_shapes(self, shapes: dict[str, tuple]) -> None:
        """Raise UnsupportedLayerError when Keras built the layer for inputs it cannot take
        (`shapes`: argument name → shape, e.g. `{"query_shape": (None, 4, 6)}`)."""

    def get_config(self) -> dict:
        return {"name": self.name, **self.config}

    def unsupported(self, detail: str) -> None:
        from nntrace.layers import SUPPORTED_LAYERS

        raise UnsupportedLayerError(self.name, type(self).__name__, SUPPORTED_LAYERS, detail)

    # -- weights --------------------------------------------------------------------------------
    def weight_shapes(self) -> dict[str, Shape]:
        """Weight names in Keras's `get_weights()` order, with their shape templates."""
        return {}

    def get_weights(self) -> list[np.ndarray]:
        return [self.weights[n] for n in self.weight_shapes()]

    def set_weights(self, arrays: Sequence[np.ndarray]) -> None:
        """Take weights in Keras's `get_weights()` order; check their count and shapes."""
        shapes = self.weight_shapes()
        if len(arrays) != len(shapes):
            raise WeightMismatchError(
                f"layer '{self.name}' ({type(self).__name__}) takes {len(shapes)} weight arrays "
                f"({', '.join(shapes) or 'none'}), got {len(arrays)}"
            )
        new = {}
        for (wname, template), arr in zip(shapes.items(), arrays):
            arr = np.asarray(arr)
            if len(arr.shape) != len(template) or any(
                t is not None and t != s for t, s in zip(template, arr.shape)
            ):
                want = "(" + ", ".join("*" if t is None else str(t) for t in template) + ")"
                raise WeightMismatchError(
                    f"layer '{self.name}' ({type(self).__name__}) weight '{wname}' must have shape "
                    f"{want}, got {arr.shape}"
                )
            new[wname] = arr if arr.dtype.kind in "UO" else arr.astype(np.float32)
        self.weights = new
        self.built()

    def built(self) -> None:
        """Hook run after weights are set (derive cached arrays here)."""

    # -- forward --------------------------------------------------------------------------------
    def __call__(self, x: np.ndarray, mask: np.ndarray | None = None, training: bool = False, **options):
        return self.forward(x, mask=mask, training=training, **options)

    def forward(self, x: np.ndarray, mask: np.ndarray | None = None, training: bool = False, **options):
        """Vectorised forward pass over the batch.

        A layer that takes several inputs (a merge, attention) gets `x` and `mask` as tuples; call
        options such as `use_causal_mask` come as keywords (see `call_options`).
        """
        if self.weight_shapes() and not self.weights:
            raise WeightMismatchError(f"layer '{self.name}' ({type(self).__name__}) has no weights yet")
        if options:
            unknown = sorted(set(options) - set(self.call_options))
            if unknown:
                self.unsupported(f"is called with {', '.join(unknown)}, which nntrace does not support here")
            return self.call(x, mask, training, **options)
        return self.call(x, mask, training)

    def call(self, x: np.ndarray, mask: np.ndarray | None, training: bool):
        raise NotImplementedError

    def steps(self, x: np.ndarray, mask: np.ndarray | None = None, context: dict | None = None,
              **filters: Any) -> Iterator[Any]:
        """Fine-grained trace events for ONE sample (`x` has a batch axis of 1), produced lazily.

        Layers whose maths has visible steps (a conv patch, a pooling window, a gate) override this;
        the values recombine to `forward`'s output.
        """
        return iter(())

    # -- backward -------------------------------------------------------------------------------
    def forward_with_cache(self, x: np.ndarray, mask: np.ndarray | None = None, **options) -> tuple[Any, Any]:
        """The inference forward pass and what `backward` reuses (None: it recomputes what it needs).

        Call options (`call_options`, e.g. `use_causal_mask`) come as keywords, only to a layer
        that has some; `backward` then gets the same ones."""
        return self.forward(x, mask=mask, **options), None

    def backward(self, dy: Any, x: Any, mask: np.ndarray | None = None, y: Any = None,
                 cache: Any = None, **options) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        """Gradients of the inference forward pass, vectorised over the batch.

        Args:
            dy: dL/d(output), the shape of `forward(x)`'s output.
            x, mask: the forward inputs; y: the forward output (recomputed when None);
            cache: what `forward_with_cache` returned beside `y`;
            options: the call's options, as `forward_with_cache` got them.
        Returns:
            `(dx, weight_grads)`: dL/dx (None when the input is not differentiable: token ids,
            strings) and `{weight name: dL/dweight}` for the weights the output depends on through
            differentiable paths (moving statistics and vocabularies get none).
        """
        from nntrace.layers import LAYER_CLASSES

        with_backward = [n for n, cls in LAYER_CLASSES.items()
                         if cls.backward is not Layer.backward and n not in ("InputLayer", "Identity")]
        raise UnsupportedLayerError(self.name, type(self).__name__, with_backward,
                                    "has no backward pass yet (gradients); the layers listed have one")

    def backward_deferring_input(self, dy: Any, x: Any, mask: np.ndarray | None = None, y: Any = None,
                                 cache: Any = None, **options) -> tuple[dict[str, np.ndarray], Callable[[], Any]]:
        """`backward` as `(weight_grads, input_gradient)`, where `input_gradient()` gives dL/dx: a
        layer whose input gradient costs as much as its weight gradients (Conv2D) leaves it until
        asked, for the first layer of a model, whose input gradient only the caller may read."""
        dx, grads = self.backward(dy, x, mask, y, cache, **options)
        return grads, lambda: dx

    def output_of(self, x: Any, mask: np.ndarray | None, y: Any) -> Any:
        """`y` if given, else the forward output for `x`."""
        return self.forward(x, mask=mask) if y is None else y

    def activation_backward(self, dy: np.ndarray, z: np.ndarray | None, y: np.ndarray,
                            key: str = "activation") -> np.ndarray:
        """dL/d(pre-activation) from dL/d(output); `z` (the pre-activation) may be None when the
        activation's gradient reads only its output `y`."""
        try:
            grad = activations.gradient(self.config.get(key, "linear"))
        except ValueError as exc:
            self.unsupported(str(exc))
        return grad(dy, z, y)

    def compute_mask(self, x: np.ndarray, mask: np.ndarray | None) -> np.ndarray | None:
        """The mask this layer passes on (Keras's `compute_mask`)."""
        return mask if self.supports_masking else None

    # -- helpers --------------------------------------------------------------------------------
    def expect(self, x: np.ndarray, ndim: int | None, last: int | None, what: str) -> None:
        """Check rank (None: any rank ≥ 2) and last axis of a numeric input; raise InputShapeError."""
        if not isinstance(x, np.ndarray) or x.dtype.kind not in "fiub":
            raise InputShapeError(self.name, type(self).__name__, f"a numeric array {what}",
                                  f"{type(x).__name__} of dtype {getattr(x, 'dtype', '?')}")
        if (x.ndim < 2 if ndim is None else x.ndim != ndim) or (last is not None and x.shape[-1] != last):
            raise InputShapeError(self.name, type(self).__name__, f"of shape {what}", f"shape {x.shape}")

    def activation_fn(self, key: str = "activation"):
        try:
            return activations.get(self.config.get(key, "linear"))
        except ValueError as exc:
            self.unsupported(str(exc))

    def __repr__(self) -> str:
        shapes = {k: v.shape for k, v in self.weights.items()}
        return f"{type(self).__name__}('{self.name}'{', ' if shapes else ''}{shapes or ''})"


def as_float32(x: np.ndarray) -> np.ndarray:
    return x if x.dtype == np.float32 else x.astype(np.float32)
