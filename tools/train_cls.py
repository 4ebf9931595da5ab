#!/usr/bin/env python
"""Image classification with Lightning: fit / validate / test / predict.

    python tools/train_cls.py fit --config configs/cls/demo.yaml
    python tools/train_cls.py fit --config configs/cls/shiftwise_tiny_in1k.yaml --data.root /data/imagenet --trainer.devices 8
    python tools/train_cls.py fit --model.backbone shiftwise_atto --model.num_classes 10 --data.root DIR \\
        --data.image_size 32 --data.batch_size 64 --trainer.max_epochs 12 --trainer.accelerator cpu
    python tools/train_cls.py fit --config configs/cls/finetune.yaml --model.weights FILE --model.num_classes 10 --data.root DIR
    python tools/train_cls.py fit ... --lr_find                            # learning-rate range test
    python tools/train_cls.py validate --model.backbone ... --data.root DIR --ckpt_path PATH
    python tools/train_cls.py predict --config CONFIG --ckpt_path PATH --predictions.contact_sheet true
    python tools/train_cls.py fit --config CONFIG --ckpt_path last        # resume

`python tools/train_cls.py fit --help` lists every option (swtasks.cls.cli).
"""

import os

# Shared CPUs: with more busy threads than cores, OpenMP's default spin-waiting makes every parallel op wait for
# descheduled threads (5-20x slower steps measured on a loaded 2-core machine); passive waiting costs next to
# nothing when the cores are free. Set before torch loads OpenMP; an explicit OMP_WAIT_POLICY wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from swtasks.cls.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
