# CPU smoke configuration (used by the tests): Mask R-CNN with the KernelWarehouse ResNet-18 (1/4x, 4.0M
# parameters) on the tiny COCO-format dataset of the shift-wise smoke run (64x64 images, 2 iterations), with
# the KW recipe's backbone settings (frozen stem and stage 1, norm_eval, temperature 0) and optimiser
# (configs/det/mask-rcnn_kw-resnet50-1x_fpn_ms-crop-1x_coco.py).
#
#   python -m swtasks.mm.testing coco data/tiny_coco
#   python tools/train_det.py configs/det/mask-rcnn_kw-resnet18-1d4x_fpn_2iter_tiny-coco.py --data-root data/tiny_coco
_base_ = './mask-rcnn_shiftwise-atto_fpn_2iter_tiny-coco.py'

chans = [64, 128, 256, 512]
model = dict(
    backbone=dict(
        _delete_=True,
        type='KWResNet',
        arch='resnet18_1d4x',
        frozen_stages=1,
        norm_eval=True,
        init_cfg=None),
    neck=dict(in_channels=chans))
# the KW recipe's AdamW without layer decay; _delete_: no num_layers (the base chain's 12 dropped, as the recipe)
optim_wrapper = dict(paramwise_cfg=dict(_delete_=True, decay_rate=1.0, decay_type='layer_wise'))
