"""Engine: the training loop, evaluation, losses, schedules, metrics, checkpoints and device setup."""

from eseg_cli.engine.config import TrainConfig, load_config
from eseg_cli.engine.evaluator import evaluate, evaluate_onnx
from eseg_cli.engine.metrics import ConfusionMatrix
from eseg_cli.engine.scoring import score_predictions
from eseg_cli.engine.trainer import train

__all__ = ["ConfusionMatrix", "TrainConfig", "evaluate", "evaluate_onnx", "load_config", "score_predictions", "train"]
