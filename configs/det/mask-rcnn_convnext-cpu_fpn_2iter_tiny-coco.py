# CPU smoke configuration (used by the tests): Mask R-CNN with a small ConvNeXt (depths 1/1/1/1, dims
# 16/32/64/128) on the tiny COCO-format dataset of the shift-wise smoke run (64x64 images, 2 iterations),
# with the ConvNeXt recipe's optimiser (configs/det/mask-rcnn_convnext-t_fpn_ms-crop-3x_coco.py).
#
#   python -m swtasks.mm.testing coco data/tiny_coco
#   python tools/train_det.py configs/det/mask-rcnn_convnext-cpu_fpn_2iter_tiny-coco.py --data-root data/tiny_coco
_base_ = './mask-rcnn_shiftwise-atto_fpn_2iter_tiny-coco.py'

dims = [16, 32, 64, 128]
model = dict(
    backbone=dict(
        _delete_=True,
        type='ConvNeXt',
        arch=dict(base='t', depths=(1, 1, 1, 1), dims=tuple(dims)),
        drop_path_rate=0.1,
        layer_scale_init_value=1.0,
        init_cfg=None),
    neck=dict(in_channels=dims))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.95, decay_type='layer_wise', num_layers=6))
