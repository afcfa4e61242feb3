"""Scratch model containers, Keras conversion, data, training. TensorFlow loads only when needed."""
from nntrace.models.scratch import (CNNFromScratch, LSTMFromScratch, RNNFromScratch, ScratchModel, container_for,
                            load_scratch)

__all__ = ["ScratchModel", "CNNFromScratch", "RNNFromScratch", "LSTMFromScratch", "load_scratch",
           "container_for"]
