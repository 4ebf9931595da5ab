# UperNet + auxiliary FCN head with a ConvNeXt-T backbone: the published ConvNeXt ADE20K recipe
# (facebookresearch/ConvNeXt, semantic_segmentation/configs/convnext/upernet_convnext_tiny_512_160k_ade20k_ss.py;
# published 46.0 mIoU single-scale): 512x512 crops, 160k iterations, 16 images per batch (8 GPUs x 2), AdamW
# lr 1e-4 / wd 0.05, stage-wise lr decay 0.9 over 6 ids, linear warm-up 1500 iterations then poly (power 1),
# drop path 0.4, layer scale init 1.0, sliding-window test (crop 512, stride 341).
#
# It reuses MMSegmentation's ConvNeXt UperNet config from the installed package (UperNet 512 channels, pool
# scales 1/2/3/6, auxiliary head on stage index 2, schedule) and swaps in this toolkit's ConvNeXt-T.
# fp32 here (the reference used fp16): `--amp` turns mixed precision on.
_base_ = 'mmseg::convnext/convnext-base_upernet_8xb2-amp-160k_ade20k-512x512.py'

custom_imports = dict(imports=['swtasks.mm'], allow_failed_imports=False)

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
    decode_head=dict(in_channels=dims, num_classes=150),
    auxiliary_head=dict(in_channels=dims[2], num_classes=150))

# stage-wise ids: downsampling layers 0, stage s -> s + 1; lr scale 0.9 ** (num_layers + 1 - id)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=6))

# the heads' SyncBN (from the base config) in distributed runs; plain BN in a single process
sync_bn = 'torch'
