"""NumPy from-scratch layers that read Keras weights and reproduce Keras's outputs.

No TensorFlow import anywhere in this package.
"""
from nntrace.layers.base import Layer
from nntrace.layers.conv import Conv2D
from nntrace.layers.core import Activation, Dense, Dropout, Flatten, Identity, InputLayer, Rescaling, Reshape, Softmax
from nntrace.layers.embedding import Embedding, TextVectorization
from nntrace.layers.errors import (InputShapeError, ModelStructureError, NNTraceError, UnsupportedLayerError,
                           WeightMismatchError)
from nntrace.layers.normalization import BatchNormalization
from nntrace.layers.pooling import AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D, MaxPooling2D
from nntrace.layers.recurrent import LSTM, Bidirectional, SimpleRNN

#: Keras class name → scratch class.
LAYER_CLASSES: dict[str, type[Layer]] = {
    cls.__name__: cls
    for cls in (Conv2D, MaxPooling2D, AveragePooling2D, GlobalMaxPooling2D, GlobalAveragePooling2D, Flatten,
                Reshape, Dense, Activation, Softmax, Rescaling, BatchNormalization, Dropout, Embedding,
                TextVectorization, SimpleRNN, LSTM, Bidirectional, InputLayer, Identity)
}
SUPPORTED_LAYERS: list[str] = sorted([n for n in LAYER_CLASSES if n not in ("InputLayer", "Identity")] +
                                      ["RandomFlip", "RandomTranslation", "RandomRotation", "RandomZoom",
                                       "RandomContrast", "RandomCrop", "GaussianNoise", "GaussianDropout",
                                       "SpatialDropout1D", "SpatialDropout2D"])

__all__ = ["Layer", "LAYER_CLASSES", "SUPPORTED_LAYERS", "NNTraceError", "UnsupportedLayerError",
           "InputShapeError", "WeightMismatchError", "ModelStructureError", *LAYER_CLASSES]
