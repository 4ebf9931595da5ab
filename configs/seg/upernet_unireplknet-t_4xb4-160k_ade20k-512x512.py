# ADE20K UperNet with a UniRepLKNet-T backbone: the published recipe (UperNet with pool scales 1,2,3,6 and
# 512 channels, auxiliary FCN head on stage index 2, 512x512 crops, 160k iterations, 16 images per batch,
# AdamW lr 1e-4 / wd 0.05, poly schedule after 1500 linear warm-up iterations, drop path 0.2, no layer-wise
# lr decay ("0.9 or 1.0 makes almost no difference"), whole-image test; 48.6 mIoU single-scale published).
# Everything else comes from MMSegmentation's own config shipped inside the installed package.
_base_ = 'mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py'

custom_imports = dict(imports=['swtasks.mm'], allow_failed_imports=False)

pretrained = 'checkpoints/unireplknet_t_in1k.pth'
dims = [80, 160, 320, 640]

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='UniRepLKNet',
        arch='t',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        layer_scale_init_value=1e-6,
        frozen_stages=-1,
        norm_eval=False,
        with_cp=False,
        deploy=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    decode_head=dict(in_channels=dims, num_classes=150),
    auxiliary_head=dict(in_channels=dims[2], num_classes=150),
    test_cfg=dict(mode='whole'))

sync_bn = 'torch'

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(decay_rate=1.0, decay_type='layer_wise', num_layers=9))

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, begin=1500, end=160000, eta_min=0.0, by_epoch=False),
]

train_dataloader = dict(batch_size=4)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
