"""Derive a Keras model's :class:`~tilepipe.geometry.Footprint` from its layers.

A tile's output is exact when every output pixel of its core sees the same
input pixels, and the same zero padding, as it would in the whole scene. Two
things can break that, and both are tracked here per tensor and per spatial
axis (rows = axis 1, cols = axis 2 of NHWC), in a tensor's window-local index
``j`` (global index ``j + w0`` for a window starting at input pixel ``w0``):

* the receptive field: output ``j`` depends on input ``[j + ext_lo, j + ext_hi]``;
* contamination: ``padding="same"`` (and ``ZeroPadding2D``) insert zeros at
  every window edge, but in the whole scene only scene edges are padded. The
  ``c_lo``/``c_hi`` positions nearest a window edge that is not a scene edge
  may therefore differ from the whole-scene result, even where the receptive
  field alone says they are fine (a deep ``same`` stack pads every layer).

Plus ``shrink`` (tensor length = input length - shrink), ``offset`` (tensor
index ``j`` sits at input pixel ``j + offset``) and ``peak``, the largest
shrink of any tensor on the way: TF cannot run a window shorter than that, even
one at a scene edge whose core needs little input (``valid`` then padding). Only layers known to be local
and translation-equivariant are accepted: anything else is refused, because a
wrong footprint gives silently wrong borders rather than an error.

The graph is read, never run: Sequential models by chaining ``model.layers``,
functional models through each tensor's ``_keras_history`` (Keras 3 keeps no
public API for walking a graph backwards from its outputs).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, NoReturn

import numpy as np

from tilepipe.errors import ModelError, UntileableModelError
from tilepipe.geometry.footprint import AxisFootprint, Footprint
from tilepipe.model._tf import keras

__all__ = ["footprint_of"]

kl = keras.layers
# Functional is not exported by Keras 3; it is what keras.Model(inputs, outputs) returns.
Functional = keras.src.models.functional.Functional


@dataclass(frozen=True, slots=True)
class _Axis:
    """One tensor's state along one axis; see the module docstring. Units: pixels."""

    ext_lo: int = 0
    ext_hi: int = 0
    c_lo: int = 0
    c_hi: int = 0
    shrink: int = 0
    offset: int = 0
    peak: int = 0

    def same(self, k: int) -> _Axis:
        """A stride-1 ``same`` window of effective size ``k`` (TF pads the extra pixel after)."""
        lo = (k - 1) // 2
        hi = k - 1 - lo
        return replace(
            self,
            ext_lo=self.ext_lo - lo,
            ext_hi=self.ext_hi + hi,
            c_lo=self.c_lo + lo,
            c_hi=self.c_hi + hi,
        )

    def valid(self, k: int) -> _Axis:
        """A stride-1 ``valid`` window of effective size ``k``: out[j] uses in[j .. j+k-1]."""
        # Contamination stays put: out[j] reaches a contaminated in[] exactly when
        # j itself lies as close to that edge in the (shorter) output.
        return replace(
            self,
            ext_hi=self.ext_hi + k - 1,
            shrink=self.shrink + k - 1,
            offset=self.offset + (k - 1) // 2,
            peak=max(self.peak, self.shrink + k - 1),
        )

    def pad(self, lo: int, hi: int) -> _Axis:
        """``ZeroPadding2D``: out[j] = in[j - lo]; the new zeros are padding like ``same``'s."""
        return replace(
            self,
            ext_lo=self.ext_lo - lo,
            ext_hi=self.ext_hi - lo,
            c_lo=self.c_lo + lo,
            c_hi=self.c_hi + hi,
            shrink=self.shrink - lo - hi,
            offset=self.offset - lo,
        )

    def crop(self, lo: int, hi: int) -> _Axis:
        """``Cropping2D``: out[j] = in[j + lo]; cropping cuts contaminated edges away."""
        return _Axis(
            ext_lo=self.ext_lo + lo,
            ext_hi=self.ext_hi + lo,
            c_lo=max(0, self.c_lo - lo),
            c_hi=max(0, self.c_hi - hi),
            shrink=self.shrink + lo + hi,
            offset=self.offset + lo,
            peak=max(self.peak, self.shrink + lo + hi),
        )

    def footprint(self) -> AxisFootprint:
        """The tile margins that make every core pixel exact."""
        # Clamped at 0: padding layers can make a raw bound negative, and a
        # window larger than needed is still exact (all bounds are lower bounds).
        # The peak terms keep a window clipped at a scene edge longer than peak:
        # a core at output pixel 0 gets >= 1 + after input pixels, and one at
        # the last output pixel gets >= 1 + shrink + before.
        return AxisFootprint(
            before=max(0, -self.ext_lo, self.c_lo, self.peak - self.shrink),
            after=max(0, self.ext_hi, self.shrink + self.c_hi, self.peak),
            shrink=self.shrink,
            offset=self.offset,
        )


_State = tuple[_Axis, _Axis]  # (rows, cols)

_NOT_LOCAL = "is not local: "
_NO_TILING = ", so no tiling can be exact"
_STRIDED = "strided and resampling models are not supported (exact tiling of strided layers needs stride-aligned tiles)"
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
    **{name: "changes the resolution: " + _STRIDED for name in ("Conv2DTranspose", "UpSampling2D", "Resizing")},
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
_KNOWN = {
    *_WINDOWED_CONV,
    *_WINDOWED_POOL,
    kl.ZeroPadding2D,
    kl.Cropping2D,
    *_POINTWISE,
    kl.PReLU,
    *_BAND_AXIS_ONLY,
}


def footprint_of(model: keras.Model) -> Footprint:
    """Derive the footprint of a one-image-in, one-image-out Keras model.

    Parameters
    ----------
    model
        A Keras 3 Sequential or functional model (nested sub-models allowed)
        taking and returning one ``(batch, rows, cols, bands)`` image.

    Returns
    -------
    Footprint
        Per axis, in input pixels: the margins ``before``/``after`` a tile's
        core that make its output exact (and its window, clipped at a scene
        edge, long enough for TF to run), the ``shrink`` of ``valid`` layers
        and the ``offset`` of output pixel 0.

    Raises
    ------
    UntileableModelError
        If any layer is not local, is strided, is not a layer tilepipe knows,
        or the model is not one image in and one image out. The message names
        the layer and why.
    ModelError
        If ``model`` is not a Keras model, or has no defined input yet.
    """
    if not isinstance(model, keras.Model):
        raise ModelError(f"Expected a keras.Model. Got {type(model).__name__} instead.")
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
    if kind not in _KNOWN:
        _refuse(op, "is not one tilepipe knows how to tile")
    if len(states) != 1:
        _refuse(op, f"takes {len(states)} inputs; only merge layers may take several")
    (state,) = states
    if getattr(op, "data_format", "channels_last") != "channels_last":
        _refuse(op, "is channels_first: tilepipe tiles channels_last (rows, cols, bands) images")
    if getattr(op, "activation", None) not in _BUILTIN_ACTIVATIONS:
        # A custom activation is arbitrary code, as a Lambda is; Keras's own act
        # element-wise or along the last (band) axis.
        _refuse(op, "has a custom activation that tilepipe cannot inspect")
    if kind is kl.Rescaling and max(np.ndim(op.scale), np.ndim(op.offset)) > 1:
        _refuse(op, _NOT_LOCAL + "its scale or offset varies with position")
    if kind in _WINDOWED_CONV:
        return [_windowed(op, state, tuple(op.kernel_size), tuple(op.dilation_rate))]
    if kind in _WINDOWED_POOL:
        return [_windowed(op, state, tuple(op.pool_size), (1, 1))]
    if kind is kl.ZeroPadding2D:
        (top, bottom), (left, right) = op.padding
        return [(state[0].pad(top, bottom), state[1].pad(left, right))]
    if kind is kl.Cropping2D:
        (top, bottom), (left, right) = op.cropping
        return [(state[0].crop(top, bottom), state[1].crop(left, right))]
    if kind in _POINTWISE:
        return [state]
    if kind is kl.PReLU:
        # Without shared spatial axes, alpha has one value per pixel position.
        if {1, 2} <= {a % 4 for a in (op.shared_axes or ())}:
            return [state]
        _refuse(op, _NOT_LOCAL + "its alpha varies with position; use shared_axes=[1, 2]")
    # What is left of _KNOWN: the layers that must act along the band axis only.
    axes = () if op.axis is None else (op.axis,) if isinstance(op.axis, int) else tuple(op.axis)
    if any(a % 4 != 3 for a in axes):
        _refuse(op, f"{_NOT_LOCAL}it works over axis {axes}, which includes rows or cols{_NO_TILING}")
    return [state]


def _windowed(op: Any, state: _State, kernel: tuple[int, ...], dilation: tuple[int, ...]) -> _State:
    """A convolution or pooling window: stride 1, ``same`` or ``valid`` only."""
    strides = tuple(op.strides)
    if any(s != 1 for s in strides):
        # Pooling strides default to pool_size, so MaxPooling2D(2) lands here too.
        _refuse(op, f"has strides {strides}: {_STRIDED}")
    padding = str(op.padding).lower()
    ks = [d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True)]
    if padding == "same":
        return (state[0].same(ks[0]), state[1].same(ks[1]))
    if padding == "valid":
        return (state[0].valid(ks[0]), state[1].valid(ks[1]))
    _refuse(op, f"has padding {padding!r}; tilepipe knows 'same' and 'valid'")


def _merge(op: Any, states: list[_State]) -> _State:
    """Element-wise merges and band concatenation: the union of their inputs' needs."""
    if type(op) is kl.Concatenate and op.axis % 4 != 3:
        _refuse(op, f"{_NOT_LOCAL}it concatenates along axis {op.axis}, not the band axis")
    merged = []
    for name, axes in zip(("rows", "cols"), zip(*states, strict=True), strict=True):
        if len({a.shrink for a in axes}) != 1:
            _refuse(op, f"merges inputs of different sizes along {name}")
        merged.append(
            _Axis(
                ext_lo=min(a.ext_lo for a in axes),
                ext_hi=max(a.ext_hi for a in axes),
                c_lo=max(a.c_lo for a in axes),
                c_hi=max(a.c_hi for a in axes),
                shrink=axes[0].shrink,
                peak=max(a.peak for a in axes),
                # Georeferencing follows the first input; equal shrinks keep the
                # merge translation-equivariant even if offsets differ.
                offset=axes[0].offset,
            )
        )
    return (merged[0], merged[1])
