# ADE20K UperNet with a UniRepLKNet-T backbone: the published recipe (UperNet with pool scales 1,2,3,6 and
# 512 channels, auxiliary FCN head on stage index 2, 512x512 crops, 160k iterations, 16 images per batch,
# AdamW lr 1e-4 / wd 0.05, poly schedule after 1500 linear warm-up iterations, drop path 0.2, no layer-wise
# lr decay ("0.9 or 1.0 makes almost no difference"), whole-image test; 48.6 mIoU single-scale published).
# AdamW, the schedule, the batch size and MMSegmentation's own UperNet config from the installed package:
# configs/_base_/upernet_160k_ade20k_adamw-layer-decay.py.
_base_ = '../_base_/upernet_160k_ade20k_adamw-layer-decay.py'

pretrained = 'checkpoints/unireplknet_t_in1k.pth'
dims = [80, 160, 320, 640]

model = dict(
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

# no layer-wise decay (rate 1.0)
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=1.0, decay_type='layer_wise', num_layers=9))
