"""Derive a Keras model's :class:`~tilepipe.geometry.Footprint` from its layers.

A tile's output is exact when every output pixel of its core equals the
whole-scene model's. The reference, for a strided model, is the model run on
the scene padded with zeros at the bottom and right to a multiple of its total
stride ``S`` (see :mod:`tilepipe.geometry.footprint`); windows start at
multiples of ``S`` and are multiples of ``S`` long. Then every tensor of the
model, run on a window starting at input pixel ``a``, holds at window-local
index ``j`` what the whole scene's holds at ``j + a * scale``: Keras's
``same`` padding on a strided layer pads by an amount that depends on its
input's length modulo the stride, and the lengths of window and scene agree
modulo every stride on the way. What can still differ is tracked here per
tensor and per spatial axis (rows = axis 1, cols = axis 2 of NHWC):

* ``scale``: tensor pixels per input pixel (a product of strides and upsampling
  factors), and ``trim``: the tensor is ``scale * L - trim`` pixels long for an
  input window of ``L`` pixels (``L`` a multiple of ``S``). Lengths are affine
  in ``L`` on that residue class, which is what makes this arithmetic exact.
* ``lo``/``hi``: the tensor pixels nearest a window edge that may differ from
  the whole scene's, in tensor pixels. They grow with every layer's reach (a
  pixel is exact only when everything it reads is) and with the zeros that
  ``same`` padding (and ``ZeroPadding2D``) insert at a window edge that is not
  a scene edge. At a scene edge the window's edge *is* the reference's, so
  every pixel there is exact.
* ``step``: the least common multiple of the denominators of every scale seen,
  which is ``S``; ``need``: the input length below which some tensor would be
  empty; ``origin``: the input position of tensor pixel 0's corner.

Only layers known to be local and translation-equivariant (under shifts by
``S``) are accepted: anything else is refused, because a wrong footprint gives
silently wrong borders rather than an error.

The graph is read, never run: Sequential models by chaining ``model.layers``,
functional models through each tensor's ``_keras_history`` (Keras 3 keeps no
public API for walking a graph backwards from its outputs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from math import ceil, lcm
from typing import Any, NoReturn

import numpy as np

from tilepipe.errors import ModelError, UntileableModelError
from tilepipe.geometry.footprint import AxisFootprint, Footprint
from tilepipe.model._tf import keras

__all__ = ["footprint_of"]

kl = keras.layers
# Functional is not exported by Keras 3; it is what keras.Model(inputs, outputs) returns.
Functional = keras.src.models.functional.Functional

_ONE = Fraction(1)


def _cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` for integers, ``b > 0``."""
    return -(-a // b)


@dataclass(frozen=True, slots=True)
class _Axis:
    """One tensor's state along one axis; see the module docstring."""

    scale: Fraction = _ONE
    trim: int = 0
    lo: int = 0
    hi: int = 0
    step: int = 1
    need: Fraction = _ONE
    origin: Fraction = Fraction(0)

    def _then(self, scale: Fraction, trim: int, lo: int, hi: int, origin: Fraction) -> _Axis:
        """The state of the next tensor; keeps ``step`` and ``need`` up to date."""
        return _Axis(
            scale=scale,
            trim=trim,
            lo=max(0, lo),
            hi=max(0, hi),
            step=lcm(self.step, scale.denominator),
            need=max(self.need, (1 + trim) / scale),  # this tensor must hold at least one pixel
            origin=origin,
        )

    def window(self, k: int, s: int, same: bool) -> _Axis:
        """A convolution or pooling window of effective size ``k`` and stride ``s``.

        Output ``j`` reads input ``j*s - pad .. j*s - pad + k - 1``. With ``same``,
        TF pads ``max(k - s + r, 0)`` in all, the smaller half before, where ``r`` is
        how far the input's length falls short of a multiple of ``s``: the same for
        every window as for the scene, since both are multiples of ``S`` long.
        """
        if same:
            r = self.trim % s
            pad = max(k - s + r, 0) // 2
            trim = self.trim // s
            hi = _cdiv(self.hi + k - s + r - pad, s)
        else:
            r = (-self.trim - k) % s
            pad = 0
            trim = -((-self.trim - k) // s) - 1
            hi = _cdiv(self.hi - r, s)
        lo = _cdiv(self.lo + pad, s)
        # Corner of output pixel 0: half the kernel's excess over the stride in, less the padding
        # (for stride 1: (k - 1) // 2 - pad, the centre of a valid window rounded down).
        origin = self.origin + Fraction(max(k - s, 0) // 2 - pad) / self.scale
        return self._then(self.scale / s, trim, lo, hi, origin)

    def transpose(self, k: int, u: int, same: bool) -> _Axis:
        """``Conv2DTranspose`` of effective size ``k`` and stride ``u``: input ``i`` reaches output ``i*u - pad + t``.

        The output is ``u * n`` long (``same``) or ``u * n + max(k - u, 0)``
        (``valid``); ``same`` crops ``pad`` pixels before, as TF's gradient of a
        ``same`` convolution does. Output ``j`` is exact when every input that
        reaches it is inside the window and exact.
        """
        extra = 0 if same else max(k - u, 0)
        pad = max(k - u, 0) // 2 if same else 0
        scale = self.scale * u
        origin = self.origin - Fraction(max(k - u, 0) // 2 - pad) / scale
        return self._then(scale, u * self.trim - extra, u * self.lo + k - u - pad, u * self.hi + extra + pad, origin)

    def upsample(self, u: int, bilinear: bool) -> _Axis:
        """``UpSampling2D`` by ``u``: nearest repeats each pixel; bilinear reads the two nearest.

        Bilinear output ``j`` reads input ``floor(x)`` and ``ceil(x)`` at
        ``x = (j + 0.5) / u - 0.5`` (TF's half-pixel centres), clamped at the
        window's edges: exact once ``floor(x) >= lo``.
        """
        if bilinear:
            lo, hi = _cdiv(2 * u * self.lo + u - 1, 2), _cdiv(2 * u * self.hi + u - 1, 2)
        else:
            lo, hi = u * self.lo, u * self.hi
        return self._then(self.scale * u, u * self.trim, lo, hi, self.origin)

    def pad(self, lo: int, hi: int) -> _Axis:
        """``ZeroPadding2D``: out[j] = in[j - lo]; the new zeros are padding like ``same``'s."""
        return self._then(self.scale, self.trim - lo - hi, self.lo + lo, self.hi + hi, self.origin - lo / self.scale)

    def crop(self, lo: int, hi: int) -> _Axis:
        """``Cropping2D``: out[j] = in[j + lo]; cropping cuts edge pixels away."""
        return self._then(self.scale, self.trim + lo + hi, self.lo - lo, self.hi - hi, self.origin + lo / self.scale)

    def footprint(self) -> AxisFootprint:
        """The window margins, in input pixels and multiples of ``step``, that make every core pixel exact."""
        step, scale = self.step, self.scale

        def up(value: Fraction) -> int:
            return max(0, ceil(value / step) * step)

        return AxisFootprint(
            before=up(self.lo / scale),
            after=up((self.trim + self.hi) / scale),
            shrink=self.trim,
            offset=self.origin,
            step=step,
            scale=scale,
            min_length=max(step, up(self.need)),
        )


_State = tuple[_Axis, _Axis]  # (rows, cols)

_NOT_LOCAL = "is not local: "
_NO_TILING = ", so no tiling can be exact"
# Reasons for layers refused by name; any class missing here and from the
# accepted sets below is refused too, with a generic message.
_REFUSED: dict[str, str] = {
    **{
        f"Global{op}Pooling{d}D": _NOT_LOCAL + "it pools over the whole image" + _NO_TILING
        for op in ("Average", "Max")
        for d in (1, 2, 3)
    },
    **{
        name: _NOT_LOCAL + "it reshapes the image's axes, so pixels lose their place" + _NO_TILING
        for name in ("Flatten", "Reshape", "Permute", "RepeatVector")
    },
    "Resizing": _NOT_LOCAL + "it resizes to a fixed size, so its scale depends on the image's size" + _NO_TILING,
    **{
        name: _NOT_LOCAL + "attention mixes every position of the image" + _NO_TILING
        for name in ("Attention", "AdditiveAttention", "MultiHeadAttention", "GroupedQueryAttention")
    },
    **{
        name: _NOT_LOCAL + "a recurrent layer carries state across the image" + _NO_TILING
        for name in ("RNN", "SimpleRNN", "LSTM", "GRU", "Bidirectional", "TimeDistributed", "ConvLSTM2D")
    },
    "GroupNormalization": _NOT_LOCAL + "it normalises with statistics of the whole image" + _NO_TILING,
    "Lambda": "runs Python code that cannot be inspected (and is not loaded in safe mode)",
    "Masking": "makes a mask that tilepipe does not carry from tile to tile",
}

# Exact types, not isinstance: a subclass may override call() and do anything.
_WINDOWED_CONV = {kl.Conv2D, kl.DepthwiseConv2D, kl.SeparableConv2D}
_WINDOWED_POOL = {kl.MaxPooling2D, kl.AveragePooling2D}
_MERGES = {kl.Add, kl.Subtract, kl.Multiply, kl.Average, kl.Maximum, kl.Minimum, kl.Concatenate}
_POINTWISE = {
    kl.InputLayer,
    kl.Activation,
    kl.ReLU,
    kl.LeakyReLU,
    kl.ELU,
    kl.Dropout,
    kl.SpatialDropout2D,
    kl.GaussianNoise,
    kl.GaussianDropout,
    kl.AlphaDropout,
    kl.ActivityRegularization,
    kl.Rescaling,
    kl.Identity,
    kl.Dense,  # Keras 3 applies Dense to the last (band) axis only
}
# Pointwise only when the axes they reduce over, or keep statistics along, are
# the band axis; otherwise their weights or statistics depend on position.
_BAND_AXIS_ONLY = {
    kl.Softmax,
    kl.BatchNormalization,
    kl.LayerNormalization,
    kl.UnitNormalization,
    kl.Normalization,
}
# Keras's own activations (and None, for layers without one).
_BUILTIN_ACTIVATIONS = {
    None,
    *(fn for name, fn in vars(keras.activations).items() if callable(fn) and not name.startswith("_")),
}


def footprint_of(model: keras.Model, *, name: str | None = None) -> Footprint:
    """Derive the footprint of a one-image-in, one-image-out Keras model.

    Parameters
    ----------
    model
        A Keras 3 Sequential or functional model (nested sub-models allowed)
        taking and returning one ``(batch, rows, cols, bands)`` image.
    name
        The ``.keras`` file the model was loaded from, said first in a refusal
        (which names the layer, but a user may have several model files).

    Returns
    -------
    Footprint
        Per axis, in input pixels: the total stride windows align to, the
        output's scale, the margins ``before``/``after`` a tile's core that make
        its output exact, the ``shrink`` of ``valid`` layers, the ``offset`` of
        output pixel 0 and the shortest window TF can run the model on.

    Raises
    ------
    UntileableModelError
        If any layer is not local, is not a layer tilepipe knows,
        or the model is not one image in and one image out. The message names
        the layer and why.
    ModelError
        If ``model`` is not a Keras model, or has no defined input yet.
    """
    try:
        return _footprint(model)
    except ModelError as exc:  # UntileableModelError too: the same type, its message led by the file
        if name is None:
            raise
        raise type(exc)(f"{name}: {exc}") from None


def _footprint(model: keras.Model) -> Footprint:
    if not isinstance(model, keras.Model):
        raise ModelError(f"model: expected a keras.Model, got {type(model).__name__}")
    _check_visible(model)
    try:
        inputs, outputs = list(model.inputs), list(model.outputs)
    except (AttributeError, ValueError) as exc:
        raise ModelError(
            f"model {model.name!r} has no defined input yet: start it with keras.Input((None, None, bands)) or build it"
        ) from exc
    if len(inputs) != 1 or len(outputs) != 1:
        raise UntileableModelError(
            f"model {model.name!r} has {len(inputs)} inputs and {len(outputs)} outputs: "
            "tilepipe tiles models with one image in and one image out"
        )
    _check_image(model, "input", inputs[0])
    # Walk before checking the output, so that a Flatten or a global pooling
    # is named as the culprit rather than the output's shape.
    rows, cols = _walk_model(model, (_Axis(), _Axis()))[0]
    _check_image(model, "output", outputs[0])
    return Footprint(rows.footprint(), cols.footprint())


def _refuse(op: Any, why: str) -> NoReturn:
    # keras.ops calls on symbolic tensors (x + y) are graph nodes too, and some
    # share a layer's class name (ops.numpy.Add): say which one it is.
    what = "model" if isinstance(op, keras.Model) else "layer" if isinstance(op, keras.Layer) else "keras operation"
    raise UntileableModelError(f"{what} {op.name!r} ({type(op).__name__}) {why}")


def _check_image(model: keras.Model, what: str, tensor: Any) -> None:
    if len(tensor.shape) != 4:
        raise UntileableModelError(
            f"model {model.name!r} has an {what} of shape {tuple(tensor.shape)}: "
            "tilepipe tiles 4-D (batch, rows, cols, bands) images"
        )


def _check_visible(model: keras.Model) -> None:
    """Refuse models whose graph is hidden in (or overridden by) a ``call`` method."""
    if isinstance(model, keras.Sequential):
        visible = type(model).call is keras.Sequential.call
    else:
        visible = isinstance(model, Functional) and type(model).call is Functional.call
    if not visible:
        _refuse(
            model,
            "is a subclassed model whose layer graph cannot be seen: build it with the Sequential or functional API",
        )


def _walk_model(model: keras.Model, state: _State) -> list[_State]:
    """Carry one input state through a (possibly nested) model; one state per output."""
    _check_visible(model)
    if isinstance(model, keras.Sequential):
        for layer in model.layers:
            outs = _apply(layer, [state])
            if len(outs) != 1:
                _refuse(layer, "has several outputs inside a Sequential model")
            state = outs[0]
        return [state]
    if len(model.inputs) != 1:
        # Pairing call arguments with a nested model's (maybe dict) inputs is
        # easy to get wrong, and a wrong pairing would give a wrong halo.
        _refuse(model, f"is a nested model with {len(model.inputs)} inputs; tilepipe needs one")
    known: dict[int, _State] = {id(model.inputs[0]): state}
    for tensor in model.outputs:
        _resolve(tensor, known)
    return [known[id(t)] for t in model.outputs]


def _resolve(tensor: Any, known: dict[int, _State]) -> None:
    """Fill ``known[id(tensor)]``, walking the graph backwards from ``tensor``.

    Iterative rather than recursive, so that deep models (hundreds of layers)
    stay clear of Python's recursion limit.
    """
    stack = [tensor]
    while stack:
        t = stack[-1]
        if id(t) in known:
            stack.pop()
            continue
        op, node_index, tensor_index = t._keras_history
        node = op._inbound_nodes[node_index]
        missing = [x for x in node.input_tensors if id(x) not in known]
        if missing:
            stack.extend(missing)
            continue
        if not node.input_tensors:
            raise ModelError(f"model depends on input {op.name!r}, which is not its input")
        known[id(t)] = _apply(op, [known[id(x)] for x in node.input_tensors])[tensor_index]
        stack.pop()


def _apply(op: Any, states: list[_State]) -> list[_State]:
    """The state(s) after ``op`` given the states of its inputs, or refuse ``op``."""
    kind = type(op)
    if isinstance(op, keras.Model):
        if len(states) != 1:
            _refuse(op, f"is a nested model called on {len(states)} inputs; tilepipe needs one")
        return _walk_model(op, states[0])
    if kind.__name__ in _REFUSED:
        _refuse(op, _REFUSED[kind.__name__])
    if kind in _MERGES:
        return [_merge(op, states)]
    handler = _HANDLERS.get(kind)
    if handler is None:
        _refuse(op, "is not one tilepipe knows how to tile")
    if len(states) != 1:
        _refuse(op, f"takes {len(states)} inputs; only merge layers may take several")
    if getattr(op, "data_format", "channels_last") != "channels_last":
        _refuse(op, "is channels_first: tilepipe tiles channels_last (rows, cols, bands) images")
    if getattr(op, "activation", None) not in _BUILTIN_ACTIVATIONS:
        # A custom activation is arbitrary code, as a Lambda is; Keras's own act
        # element-wise or along the last (band) axis.
        _refuse(op, "has a custom activation that tilepipe cannot inspect")
    return [handler(op, states[0])]


# -- one handler per kind of layer: the state after it, given the state before (or a refusal)


def _conv(op: Any, state: _State) -> _State:
    return _windowed(op, state, tuple(op.kernel_size), tuple(op.dilation_rate))


def _pool(op: Any, state: _State) -> _State:
    return _windowed(op, state, tuple(op.pool_size), (1, 1))


def _padded(op: Any, state: _State) -> _State:
    (top, bottom), (left, right) = op.padding
    return (state[0].pad(top, bottom), state[1].pad(left, right))


def _cropped(op: Any, state: _State) -> _State:
    (top, bottom), (left, right) = op.cropping
    return (state[0].crop(top, bottom), state[1].crop(left, right))


def _pointwise(op: Any, state: _State) -> _State:
    return state


def _rescaled(op: Any, state: _State) -> _State:
    if max(np.ndim(op.scale), np.ndim(op.offset)) > 1:
        _refuse(op, _NOT_LOCAL + "its scale or offset varies with position")
    return state


def _prelu(op: Any, state: _State) -> _State:
    # Without shared spatial axes, alpha has one value per pixel position.
    if {1, 2} <= {a % 4 for a in (op.shared_axes or ())}:
        return state
    _refuse(op, _NOT_LOCAL + "its alpha varies with position; use shared_axes=[1, 2]")


def _band_axis(op: Any, state: _State) -> _State:
    """Layers that reduce over, or keep statistics along, their ``axis``: local where it is the band axis only."""
    axes = () if op.axis is None else (op.axis,) if isinstance(op.axis, int) else tuple(op.axis)
    if any(a % 4 != 3 for a in axes):
        _refuse(op, f"{_NOT_LOCAL}it works over axis {axes}, which includes rows or cols{_NO_TILING}")
    return state


def _padding(op: Any) -> bool:
    """Whether ``op`` pads ``same`` (else ``valid``); anything else is refused."""
    padding = str(op.padding).lower()
    if padding not in ("same", "valid"):
        _refuse(op, f"has padding {padding!r}; tilepipe knows 'same' and 'valid'")
    return padding == "same"


def _windowed(op: Any, state: _State, kernel: tuple[int, ...], dilation: tuple[int, ...]) -> _State:
    """A convolution or pooling window, any stride (pooling's defaults to its size)."""
    same = _padding(op)
    strides = tuple(op.strides)
    ks = [d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True)]
    return (state[0].window(ks[0], strides[0], same), state[1].window(ks[1], strides[1], same))


def _transposed(op: Any, state: _State) -> _State:
    if op.output_padding is not None:
        _refuse(op, "sets output_padding, which makes its output's length depend on more than its input's")
    same = _padding(op)
    ks = [d * (k - 1) + 1 for k, d in zip(op.kernel_size, op.dilation_rate, strict=True)]
    return (state[0].transpose(ks[0], op.strides[0], same), state[1].transpose(ks[1], op.strides[1], same))


def _upsampled(op: Any, state: _State) -> _State:
    if op.interpolation not in ("nearest", "bilinear"):
        _refuse(op, f"interpolates {op.interpolation!r}; tilepipe tiles 'nearest' and 'bilinear' upsampling exactly")
    bilinear = op.interpolation == "bilinear"
    return (state[0].upsample(op.size[0], bilinear), state[1].upsample(op.size[1], bilinear))


def _merge(op: Any, states: list[_State]) -> _State:
    """Element-wise merges and band concatenation, skips across scales included: the union of their inputs' needs."""
    if type(op) is kl.Concatenate and op.axis % 4 != 3:
        _refuse(op, f"{_NOT_LOCAL}it concatenates along axis {op.axis}, not the band axis")
    merged = []
    for name, axes in zip(("rows", "cols"), zip(*states, strict=True), strict=True):
        if len({(a.scale, a.trim) for a in axes}) != 1:
            _refuse(op, f"merges inputs of different sizes along {name}")
        merged.append(
            _Axis(
                scale=axes[0].scale,
                trim=axes[0].trim,
                lo=max(a.lo for a in axes),
                hi=max(a.hi for a in axes),
                step=lcm(*(a.step for a in axes)),
                need=max(a.need for a in axes),
                # Georeferencing follows the first input; equal lengths keep the
                # merge translation-equivariant even if origins differ.
                origin=axes[0].origin,
            )
        )
    return (merged[0], merged[1])


#: How each layer tilepipe knows changes the state (exact types, as above; merges apart). A layer
#: not here is refused.
_HANDLERS: dict[type, Callable[[Any, _State], _State]] = {
    **dict.fromkeys(_WINDOWED_CONV, _conv),
    **dict.fromkeys(_WINDOWED_POOL, _pool),
    kl.Conv2DTranspose: _transposed,
    kl.UpSampling2D: _upsampled,
    kl.ZeroPadding2D: _padded,
    kl.Cropping2D: _cropped,
    **dict.fromkeys(_POINTWISE, _pointwise),
    kl.Rescaling: _rescaled,  # pointwise where its scale and offset are one value per band
    kl.PReLU: _prelu,
    **dict.fromkeys(_BAND_AXIS_ONLY, _band_axis),
}
