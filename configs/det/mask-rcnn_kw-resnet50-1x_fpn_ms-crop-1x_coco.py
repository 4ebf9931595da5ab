# Mask R-CNN + FPN with a KernelWarehouse ResNet-50 (1x) backbone: the published KernelWarehouse COCO recipe
# (OSVAI/KernelWarehouse, detection/configs/kernelwarehouse/resnet50/mask_rcnn_kw1x_resnet50_adamw_1x_coco.py;
# published 41.8 box AP / 38.4 mask AP, the plain ResNet-50: 39.6 / 36.4): 12 epochs (lr steps at 8 and
# 11), multi-scale training 480-800 with a DETR-style crop branch, AdamW lr 1e-4 / wd 0.05 (none on norms),
# frozen stem and stage 1, BatchNorm statistics fixed (norm_eval), 16 images per batch (8 GPUs x 2). The
# attention temperature is fixed at 0 (dense-task fine-tuning, as published).
# Other KW variants: `--cfg-options model.backbone.arch=resnet50_4x` (published 42.4 / 38.9).
#
# Pipeline and heads from MMDetection's ConvNeXt Mask R-CNN config (the same DETR-style multi-scale crop
# augmentation the KW configs use; through configs/_base_/mask-rcnn_fpn_ms-crop-3x_coco_adamw-layer-decay.py, with
# AdamW lr 1e-4 / wd 0.05 and the batch size), with the 1x schedule.
_base_ = '../_base_/mask-rcnn_fpn_ms-crop-3x_coco_adamw-layer-decay.py'

# the converted published ImageNet checkpoint (tools/convert_checkpoint.py --source kernelwarehouse-official
# ... --model kw_resnet50_1x), or the published file itself
pretrained = 'checkpoints/kw_resnet50_1x_in1k.pth'

model = dict(
    backbone=dict(
        _delete_=True,
        type='KWResNet',
        arch='resnet50_1x',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.0,
        frozen_stages=1,
        norm_eval=True,
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=[256, 512, 1024, 2048]))

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[8, 11], gamma=0.1),
]

# AdamW without layer decay (rate 1.0); no weight decay on biases and norms (the published 'norm' decay_mult 0)
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=1.0, decay_type='layer_wise'))
