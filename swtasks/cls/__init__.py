"""Image classification with Lightning: module, data, callbacks and the CLI behind tools/train_cls.py.

    from swtasks.cls import ClassificationModule, ImageClassificationDataModule
    model = ClassificationModule("shiftwise_atto", num_classes=4)
    dm = ImageClassificationDataModule(dataset="longrange", batch_size=64)
    lightning.Trainer(max_epochs=1).fit(model, dm)

Imports lightning (unlike swtasks.models), so `import swtasks` does not import this package.
"""

from .callbacks import Checkpoint, LearningCurves, PredictionWriter, SparseTraining, StepSchedule
from .data import ImageClassificationDataModule
from .ema import ModelEMA
from .errors import DataNotFoundError, InputError, NonFiniteLossError
from .io import AtomicCheckpointIO
from .mix import MixUpCutMix, soft_target_cross_entropy
from .module import ClassificationModule

__all__ = [
    "AtomicCheckpointIO",
    "Checkpoint",
    "ClassificationModule",
    "DataNotFoundError",
    "ImageClassificationDataModule",
    "InputError",
    "LearningCurves",
    "MixUpCutMix",
    "ModelEMA",
    "NonFiniteLossError",
    "PredictionWriter",
    "SparseTraining",
    "StepSchedule",
    "soft_target_cross_entropy",
]
