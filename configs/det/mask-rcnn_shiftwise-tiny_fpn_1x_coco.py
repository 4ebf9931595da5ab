# Mask R-CNN + FPN with a ShiftWiseNet-T backbone, 1x schedule (12 epochs), COCO instance segmentation.
# Everything not set here comes from MMDetection's own config shipped inside the installed package.
#
#   python tools/train_det.py configs/det/mask-rcnn_shiftwise-tiny_fpn_1x_coco.py \
#       --cfg-options model.backbone.init_cfg.checkpoint=PATH/TO/shiftwise_tiny.ckpt
#
# Data: data/coco/{annotations,train2017,val2017} (see data/README.md); `--data-root DIR` moves it.
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['swtasks.mm'], allow_failed_imports=False)

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

# The backbone's BatchNorms see 2 images per GPU: synchronise them in distributed runs
# (mmengine converts the model when the launcher is pytorch/slurm; single-process runs keep plain BN).
sync_bn = 'torch'

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(decay_rate=0.8, decay_type='layer_wise', num_layers=12))

# total batch 16 (8 GPUs x 2 images); scale lr linearly with `--auto-scale-lr` for other sizes
auto_scale_lr = dict(enable=False, base_batch_size=16)
