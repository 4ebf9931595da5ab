# Mask R-CNN + FPN with a ConvNeXt-T backbone: the published ConvNeXt COCO recipe
# (facebookresearch/ConvNeXt, object_detection/configs/convnext/mask_rcnn_convnext_tiny_..._adamw_3x_coco_in1k.py;
# published 46.2 box AP / 41.7 mask AP): multi-scale training 480-800 (max 1333) with a DETR-style crop
# branch, 36 epochs (lr steps at 27 and 33), AdamW lr 1e-4 / wd 0.05, layer-wise lr decay 0.95 over 6 layer
# ids, drop path 0.4, layer scale init 1.0, 16 images per batch (8 GPUs x 2).
#
# It reuses MMDetection's own ConvNeXt-T Mask R-CNN config from the installed package (same heads, pipeline
# and schedule; its backbone is mmpretrain's; through configs/_base_/mask-rcnn_fpn_ms-crop-3x_coco_adamw-layer-decay.py,
# with AdamW and the batch size) and swaps in this toolkit's ConvNeXt, which loads the published
# classification checkpoint (`tools/convert_checkpoint.py --source convnext-official ... --model convnext_t`,
# or the published .pth directly). fp32 here (the reference used fp16): `--amp` turns mixed precision on.
#
#   python tools/train_det.py configs/det/mask-rcnn_convnext-t_fpn_ms-crop-3x_coco.py \
#       --cfg-options model.backbone.init_cfg.checkpoint=PATH/TO/convnext_tiny_1k_224_ema.pth
_base_ = '../_base_/mask-rcnn_fpn_ms-crop-3x_coco_adamw-layer-decay.py'

pretrained = 'checkpoints/convnext_t_in1k.pth'
dims = [96, 192, 384, 768]

model = dict(
    backbone=dict(
        _delete_=True,
        type='ConvNeXt',
        arch='t',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.4,
        layer_scale_init_value=1.0,
        frozen_stages=-1,
        norm_eval=False,
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=dims))

# the published constructor's rule: stem 0, stage 1 -> 1, stage 2 -> 2, stage 3 block b -> 3 + b // 3, stage 4
# -> num_layers; lr scale 0.95 ** (num_layers + 1 - id); no weight decay on biases, norms and layer scales
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.95, decay_type='layer_wise', num_layers=6))
