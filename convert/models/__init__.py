"""Model code: YOLOv5-family architectures and a safe loader for their checkpoints."""

from convert.models.checkpoint import Checkpoint, load_checkpoint, load_state_dict_file, load_yolov5
from convert.models.yolo import YoloModel, build_model, builtin_archs, decode_raw, load_arch, load_weights

__all__ = [
    "Checkpoint", "YoloModel", "build_model", "builtin_archs", "decode_raw", "load_arch", "load_checkpoint",
    "load_state_dict_file", "load_weights", "load_yolov5",
]
