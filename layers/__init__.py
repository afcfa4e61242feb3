"""NumPy from-scratch layers that read Keras weights and reproduce Keras's outputs.

No TensorFlow import anywhere in this package.
"""
from nntrace.layers.attention import Attention, MultiHeadAttention
from nntrace.layers.base import Layer
from nntrace.layers.conv import Conv1D, Conv2D, DepthwiseConv2D, SeparableConv2D
from nntrace.layers.core import (ELU, Activation, Dense, Dropout, Flatten, Identity, InputLayer, LeakyReLU, Masking,
                                 PReLU, ReLU, Rescaling, Reshape, Softmax, SpatialDropout1D, SpatialDropout2D)
from nntrace.layers.embedding import Embedding, TextVectorization
from nntrace.layers.merging import Add, Average, Concatenate, Dot, Maximum, Minimum, Multiply, Subtract
from nntrace.layers.errors import (InputShapeError, ModelStructureError, NNTraceError, UnsupportedLayerError,
                           WeightMismatchError)
from nntrace.layers.normalization import BatchNormalization, LayerNormalization
from nntrace.layers.pooling import (AveragePooling1D, AveragePooling2D, GlobalAveragePooling1D, GlobalAveragePooling2D,
                                    GlobalMaxPooling1D, GlobalMaxPooling2D, MaxPooling1D, MaxPooling2D)
from nntrace.layers.recurrent import GRU, LSTM, Bidirectional, SimpleRNN

#: Keras class name → scratch class.
LAYER_CLASSES: dict[str, type[Layer]] = {
    cls.__name__: cls
    for cls in (Conv2D, MaxPooling2D, AveragePooling2D, GlobalMaxPooling2D, GlobalAveragePooling2D, Flatten,
                Reshape, Dense, Activation, Softmax, Rescaling, BatchNormalization, Dropout, Embedding,
                TextVectorization, SimpleRNN, LSTM, GRU, Bidirectional, InputLayer, Identity,
                Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate, Dot,
                Conv1D, DepthwiseConv2D, SeparableConv2D, MaxPooling1D, AveragePooling1D, GlobalMaxPooling1D,
                GlobalAveragePooling1D, ReLU, LeakyReLU, ELU, PReLU, Masking, SpatialDropout1D, SpatialDropout2D,
                LayerNormalization, Attention, MultiHeadAttention)
}
SUPPORTED_LAYERS: list[str] = sorted([n for n in LAYER_CLASSES if n not in ("InputLayer", "Identity")] +
                                      ["RandomFlip", "RandomTranslation", "RandomRotation", "RandomZoom",
                                       "RandomContrast", "RandomCrop", "GaussianNoise", "GaussianDropout"])

__all__ = ["Layer", "LAYER_CLASSES", "SUPPORTED_LAYERS", "NNTraceError", "UnsupportedLayerError",
           "InputShapeError", "WeightMismatchError", "ModelStructureError", *LAYER_CLASSES]
