# ADE20K UperNet with a SLaK-T backbone: the published recipe (UperNet, auxiliary FCN head on stage index 2,
# 512x512 crops, 160k iterations, 16 images per batch (4 GPUs x 4), AdamW lr 1e-4 / wd 0.05, stage-wise lr
# decay 0.9 over 6 ids, poly schedule after 1500 linear warm-up iterations, drop path 0.4, layer scale init
# 1.0, the checkpoint's sparsity pattern kept, sliding-window test (crop 512, stride 341); 47.6 mIoU
# published). Everything else comes from MMSegmentation's own config shipped inside the installed package.
_base_ = 'mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py'

custom_imports = dict(imports=['swtasks.mm'], allow_failed_imports=False)

pretrained = 'checkpoints/slak_t_in1k.pth'
dims = [124, 249, 499, 998]
crop_size = (512, 512)

model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='SLaK',
        arch='t',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.4,
        layer_scale_init_value=1.0,
        frozen_stages=-1,
        norm_eval=False,
        with_cp=False,
        sparse=True,
        deploy=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    decode_head=dict(in_channels=dims, num_classes=150),
    auxiliary_head=dict(in_channels=dims[2], num_classes=150),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))

sync_bn = 'torch'

# stage-wise ids (ConvNeXt's rule): downsampling layers 0, stage s -> s + 1, the rest num_layers + 1 (full lr);
# scale 0.9 ** (num_layers + 1 - id), the published constructor's values with its num_layers 6
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=6))

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, begin=1500, end=160000, eta_min=0.0, by_epoch=False),
]

train_dataloader = dict(batch_size=4)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
