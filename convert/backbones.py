"""Keras copies of torchvision's ResNet18/34 and SqueezeNet 1.0/1.1, built from a torchvision-layout state dict.

Every layer is placed exactly where torchvision places it (explicit paddings, ceil-mode pools, the same
flatten order), so the logits equal torchvision's for the same weights. Batch norms are folded into the
convolution before them: the same function, and one op fewer for the board and the quantiser.

The input is NHWC. With `preprocess=True` it is the 64x64 viridis image (float values 0..255, as the uint8
image casts) and the graph's first ops resize it to 224x224 and apply ImageNet normalisation; with
`preprocess=False` it is an already normalised 224x224 image, for comparing logits with a reference.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from humwatch.agent import contract
from humwatch.agent.errors import ModelError

ARCHITECTURES = ("resnet18", "resnet34", "squeezenet1_0", "squeezenet1_1")
HEADS = ("features", "logits")
BN_EPS = 1e-5
SQUEEZENET_GRID = 2  # the paper's SqueezeNet features: last map average-pooled to 2x2


def feature_dim(arch: str) -> int:
    """Length of the feature vector `arch` produces with head="features"."""
    if arch.startswith("resnet"):
        return 512
    if arch.startswith("squeezenet"):
        return 512 * SQUEEZENET_GRID * SQUEEZENET_GRID
    raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")


class Params:
    """Hands out the state dict's tensors by torchvision key, checking each shape; remembers what was used."""

    def __init__(self, state: dict[str, np.ndarray], source: str = "weights"):
        self.state = state
        self.source = source
        self.used: set[str] = set()

    def take(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        if key not in self.state:
            raise ModelError(f"{self.source}: missing tensor {key!r} (expected shape {shape})")
        value = np.asarray(self.state[key], dtype=np.float32)
        if value.shape != tuple(shape):
            raise ModelError(f"{self.source}: tensor {key!r} has shape {value.shape}, expected {tuple(shape)}")
        self.used.add(key)
        return value


class RandomParams(Params):
    """Invents seeded tensors of the requested shapes: a torchvision-layout state dict for tests and timing."""

    def __init__(self, seed: int = 0):
        super().__init__({}, source=f"random(seed={seed})")
        self.rng = np.random.default_rng(seed)

    def take(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        if key not in self.state:
            if key.endswith("running_var"):
                value = self.rng.uniform(0.5, 1.5, shape)
            elif key.endswith(".weight") and len(shape) == 1:  # batch-norm scale
                value = self.rng.uniform(0.5, 1.5, shape)
            elif key.endswith(".weight"):  # He init keeps the activations' scale through depth
                fan_in = int(np.prod(shape[1:]))
                value = self.rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
            else:  # biases, running means
                value = self.rng.normal(0.0, 0.1, shape)
            self.state[key] = value.astype(np.float32)
        return super().take(key, shape)


def random_state_dict(arch: str, seed: int = 0) -> dict[str, np.ndarray]:
    """A full torchvision-layout state dict of seeded random tensors for `arch`."""
    params = RandomParams(seed)
    build_backbone(arch, params, head="logits")
    return params.state


def expected_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Every torchvision key the full `arch` has (num_batches_tracked aside) and its shape."""
    return {k: v.shape for k, v in random_state_dict(arch).items()}


def build_backbone(arch: str, params: Params | dict, *, preprocess: bool = True, head: str = "features"):
    """The Keras model of `arch` with the weights in `params` (a Params or a plain state dict)."""
    import keras

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {HEADS}")
    if not isinstance(params, Params):
        params = Params(params)
    if preprocess:
        inputs = keras.Input(shape=contract.IMAGE_SHAPE, name="images")
        x = _imagenet_preprocess(inputs)
    else:
        inputs = keras.Input(shape=(contract.MODEL_IMAGE_SIZE, contract.MODEL_IMAGE_SIZE, 3), name="normalised")
        x = inputs
    body: Callable = _resnet if arch.startswith("resnet") else _squeezenet
    outputs = body(arch, x, params, head)
    return keras.Model(inputs, outputs, name=f"{arch}_{head}")


def _imagenet_preprocess(images):
    """uint8-valued 64x64 image -> bilinear 224x224 -> /255 -> ImageNet mean/std, as one resize and one affine op."""
    import keras

    size = contract.MODEL_IMAGE_SIZE
    x = keras.layers.Resizing(size, size, interpolation="bilinear", name="resize")(images)
    std = np.asarray(contract.IMAGENET_STD, dtype=np.float32)
    mean = np.asarray(contract.IMAGENET_MEAN, dtype=np.float32)
    return keras.layers.Rescaling(scale=1.0 / (255.0 * std), offset=-mean / std, name="imagenet_normalise")(x)


def _name(key: str) -> str:
    return key.replace(".", "_")


def _conv(x, params: Params, key: str, filters: int, kernel: int, *, stride: int = 1, padding: int = 0,
          bn: str | None = None, relu: bool = True):
    """torch Conv2d (symmetric zero padding) with an optional BatchNorm folded in, then an optional ReLU."""
    import keras

    in_ch = x.shape[-1]
    weight = params.take(f"{key}.weight", (filters, in_ch, kernel, kernel))
    if bn is None:
        bias = params.take(f"{key}.bias", (filters,))
    else:
        gamma = params.take(f"{bn}.weight", (filters,))
        beta = params.take(f"{bn}.bias", (filters,))
        mean = params.take(f"{bn}.running_mean", (filters,))
        var = params.take(f"{bn}.running_var", (filters,))
        factor = gamma / np.sqrt(var + BN_EPS)
        weight = weight * factor[:, None, None, None]
        bias = beta - mean * factor
    if padding:
        x = keras.layers.ZeroPadding2D(padding, name=_name(key) + "_pad")(x)
    layer = keras.layers.Conv2D(filters, kernel, strides=stride, padding="valid", name=_name(key))
    x = layer(x)
    layer.set_weights([weight.transpose(2, 3, 1, 0), bias])  # OIHW -> HWIO
    if relu:
        x = keras.layers.ReLU(name=_name(key) + "_relu")(x)
    return x


def _max_pool_after_relu(x, name: str, *, kernel: int = 3, stride: int = 2, padding: int = 0, ceil: bool = False):
    """torch MaxPool2d on a ReLU output.

    torch pads a max-pool with -inf (and, in ceil mode, lets the last window run past the edge). Every caller
    pools a ReLU output, which is >= 0, so zero padding gives the same maxima while staying quantisable
    (an int8 tensor cannot hold -inf).
    """
    import keras

    size = x.shape[1]
    span = size + 2 * padding - kernel
    out = -(-span // stride) + 1 if ceil else span // stride + 1
    if ceil and (out - 1) * stride >= size + padding:  # torch drops a window that would start in the padding
        out -= 1
    extra = max((out - 1) * stride + kernel - (size + 2 * padding), 0)
    if padding or extra:
        x = keras.layers.ZeroPadding2D(((padding, padding + extra), (padding, padding + extra)),
                                       name=name + "_pad")(x)
    return keras.layers.MaxPooling2D(kernel, stride, padding="valid", name=name)(x)


def _adaptive_avg_pool(x, out: int, name: str):
    """torch AdaptiveAvgPool2d(out) for a fixed input size whose bins are uniform (13 -> 2: width 7, stride 6)."""
    import keras

    size = x.shape[1]
    starts = [i * size // out for i in range(out)]
    ends = [-(-(i + 1) * size // out) for i in range(out)]
    widths = {e - s for s, e in zip(starts, ends)}
    strides = {b - a for a, b in zip(starts, starts[1:])} or {1}
    if len(widths) != 1 or len(strides) != 1:
        raise ValueError(f"adaptive pooling {size} -> {out} has uneven bins; not supported")
    return keras.layers.AveragePooling2D(widths.pop(), strides.pop(), padding="valid", name=name)(x)


def _torch_flatten(x, name: str):
    """Flatten in torch's (channel, row, column) order, so feature i means the same as in torchvision."""
    import keras

    x = keras.layers.Permute((3, 1, 2), name=name + "_to_nchw")(x)
    return keras.layers.Flatten(name=name)(x)


# --- ResNet ---------------------------------------------------------------------------------------------------

RESNET_BLOCKS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


def _resnet(arch: str, x, params: Params, head: str):
    import keras

    x = _conv(x, params, "conv1", 64, 7, stride=2, padding=3, bn="bn1")
    x = _max_pool_after_relu(x, "maxpool", padding=1)
    in_ch = 64
    for stage, (blocks, width) in enumerate(zip(RESNET_BLOCKS[arch], (64, 128, 256, 512)), start=1):
        for block in range(blocks):
            stride = 2 if stage > 1 and block == 0 else 1
            key = f"layer{stage}.{block}"
            shortcut = x
            if stride != 1 or in_ch != width:
                shortcut = _conv(x, params, f"{key}.downsample.0", width, 1, stride=stride,
                                 bn=f"{key}.downsample.1", relu=False)
            y = _conv(x, params, f"{key}.conv1", width, 3, stride=stride, padding=1, bn=f"{key}.bn1")
            y = _conv(y, params, f"{key}.conv2", width, 3, padding=1, bn=f"{key}.bn2", relu=False)
            x = keras.layers.Add(name=_name(key) + "_add")([y, shortcut])
            x = keras.layers.ReLU(name=_name(key) + "_relu")(x)
            in_ch = width
    x = keras.layers.GlobalAveragePooling2D(name="avgpool")(x)
    if head == "features":
        return x
    fc = keras.layers.Dense(1000, name="fc")
    logits = fc(x)
    fc.set_weights([params.take("fc.weight", (1000, 512)).T, params.take("fc.bias", (1000,))])
    return logits


# --- SqueezeNet -----------------------------------------------------------------------------------------------

# features.N index -> ("fire", squeeze, expand) | ("pool",); index 0 is the first conv, 1 its ReLU.
SQUEEZENET_LAYERS = {
    "squeezenet1_0": {
        "conv0": (96, 7),
        2: ("pool",), 3: ("fire", 16, 64), 4: ("fire", 16, 64), 5: ("fire", 32, 128), 6: ("pool",),
        7: ("fire", 32, 128), 8: ("fire", 48, 192), 9: ("fire", 48, 192), 10: ("fire", 64, 256),
        11: ("pool",), 12: ("fire", 64, 256),
    },
    "squeezenet1_1": {
        "conv0": (64, 3),
        2: ("pool",), 3: ("fire", 16, 64), 4: ("fire", 16, 64), 5: ("pool",), 6: ("fire", 32, 128),
        7: ("fire", 32, 128), 8: ("pool",), 9: ("fire", 48, 192), 10: ("fire", 48, 192),
        11: ("fire", 64, 256), 12: ("fire", 64, 256),
    },
}


def _fire(x, params: Params, key: str, squeeze: int, expand: int):
    import keras

    s = _conv(x, params, f"{key}.squeeze", squeeze, 1)
    e1 = _conv(s, params, f"{key}.expand1x1", expand, 1)
    e3 = _conv(s, params, f"{key}.expand3x3", expand, 3, padding=1)
    return keras.layers.Concatenate(axis=-1, name=_name(key) + "_cat")([e1, e3])


def _squeezenet(arch: str, x, params: Params, head: str):
    import keras

    layers = SQUEEZENET_LAYERS[arch]
    filters, kernel = layers["conv0"]
    x = _conv(x, params, "features.0", filters, kernel, stride=2)
    for index in sorted(k for k in layers if isinstance(k, int)):
        kind, *sizes = layers[index]
        if kind == "pool":
            x = _max_pool_after_relu(x, f"features_{index}", ceil=True)
        else:
            x = _fire(x, params, f"features.{index}", *sizes)
    if head == "features":
        x = _adaptive_avg_pool(x, SQUEEZENET_GRID, "feature_pool")
        return _torch_flatten(x, "feature_flatten")
    x = _conv(x, params, "classifier.1", 1000, 1)  # classifier.0 is dropout: identity at inference
    return keras.layers.GlobalAveragePooling2D(name="classifier_pool")(x)
