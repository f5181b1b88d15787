"""Models: backbones with attention taps, Ego-RNN and its variants, built by name via ``create_model``."""

from egoattn.models.backbones import Backbone, WeightSource, build_backbone, list_backbones
from egoattn.models.convlstm import ConvLSTM, ConvLSTMCell
from egoattn.models.egornn import EgoRNN
from egoattn.models.flow_stream import FlowStream
from egoattn.models.frame_average import FrameAverage
from egoattn.models.heads import MotionSegmentationHead, OrderPredictionHead, motion_segmentation_loss
from egoattn.models.registry import MODELS, create_model, list_models, model_options
from egoattn.models.two_in_one import TwoInOne
from egoattn.models.twostream import TwoStream

__all__ = [
    "Backbone", "WeightSource", "build_backbone", "list_backbones", "ConvLSTM", "ConvLSTMCell", "EgoRNN",
    "FlowStream", "FrameAverage", "MotionSegmentationHead", "OrderPredictionHead", "motion_segmentation_loss",
    "TwoInOne", "TwoStream", "MODELS", "create_model", "list_models", "model_options",
]
