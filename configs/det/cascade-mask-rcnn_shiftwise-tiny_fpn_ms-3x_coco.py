# The paper's COCO recipe: Cascade Mask R-CNN + FPN with a ShiftWiseNet-T backbone, 3x schedule (36 epochs,
# lr steps at 27 and 33), multi-scale training 480-800 (max 1333) with a DETR-style crop branch,
# 4conv-1fc box heads with SyncBN and GIoU loss, AdamW lr 1e-4 / wd 0.05, layer-wise lr decay 0.8 over 12
# layer ids, drop path 0.4, layer scale init 1.0, 16 images per batch (8 GPUs x 2).
#
# It reuses MMDetection's ConvNeXt-T Cascade Mask R-CNN config (same heads, pipeline and schedule) from
# the installed package and swaps the backbone and the optimiser; it trains in fp32 (the base config's
# AmpOptimWrapper is replaced; `--amp` turns mixed precision back on).
_base_ = 'mmdet::convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'

custom_imports = dict(imports=['swtasks.mm'], allow_failed_imports=False)

pretrained = 'checkpoints/shiftwise_tiny_in1k.pth'
dims = [80, 160, 320, 640]

model = dict(
    backbone=dict(
        _delete_=True,
        type='ShiftWiseNet',
        arch='tiny',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.4,
        layer_scale_init_value=1.0,
        frozen_stages=-1,
        norm_eval=False,
        with_cp=False,
        sparse=True,  # zero small kernels of the (sparse) SW-T checkpoint stay zero while fine-tuning
        deploy=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=dims))

# box heads use SyncBN (from the base config); the backbone's BatchNorms too in distributed runs
sync_bn = 'torch'

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(decay_rate=0.8, decay_type='layer_wise', num_layers=12))

train_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)
