# Mask R-CNN + FPN with a ShiftWiseNet-T backbone, 1x schedule (12 epochs), COCO instance segmentation.
# Shared with the other 1x recipes (configs/_base_/mask-rcnn_fpn_1x_coco_adamw-layer-decay.py): MMDetection's
# own Mask R-CNN 1x config from the installed package, AdamW lr 1e-4 / wd 0.05, SyncBN, total batch 16.
#
#   python tools/train_det.py configs/det/mask-rcnn_shiftwise-tiny_fpn_1x_coco.py \
#       --cfg-options model.backbone.init_cfg.checkpoint=PATH/TO/shiftwise_tiny.ckpt
#
# Data: data/coco/{annotations,train2017,val2017} (see data/README.md); `--data-root DIR` moves it.
_base_ = '../_base_/mask-rcnn_fpn_1x_coco_adamw-layer-decay.py'

# A classification checkpoint of this project (Lightning .ckpt), an exported backbone, or the converted
# published SW-T checkpoint; the prefix is a hint (the backbone's keys are found behind 'model.' etc.).
pretrained = 'checkpoints/shiftwise_tiny_in1k.pth'
dims = [80, 160, 320, 640]

model = dict(
    backbone=dict(
        _delete_=True,
        type='ShiftWiseNet',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.3,  # 0.4 in the paper's 3x recipe
        layer_scale_init_value=1.0,
        frozen_stages=-1,
        norm_eval=False,
        with_cp=False,
        sparse=False,  # True keeps the zero small kernels of a sparse checkpoint at zero
        deploy=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=dims))

# layer-wise lr decay 0.8 over 12 layer ids (AdamW lr 1e-4 / wd 0.05 from the base)
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.8, decay_type='layer_wise', num_layers=12))
