# ADE20K UperNet with a SLaK-T backbone: the published recipe (UperNet, auxiliary FCN head on stage index 2,
# 512x512 crops, 160k iterations, 16 images per batch (4 GPUs x 4), AdamW lr 1e-4 / wd 0.05, stage-wise lr
# decay 0.9 over 6 ids, poly schedule after 1500 linear warm-up iterations, drop path 0.4, layer scale init
# 1.0, the checkpoint's sparsity pattern kept, sliding-window test (crop 512, stride 341); 47.6 mIoU
# published). AdamW, the schedule, the batch size and MMSegmentation's own UperNet config from the installed
# package: configs/_base_/upernet_160k_ade20k_adamw-layer-decay.py.
_base_ = '../_base_/upernet_160k_ade20k_adamw-layer-decay.py'

pretrained = 'checkpoints/slak_t_in1k.pth'
dims = [124, 249, 499, 998]
crop_size = (512, 512)

model = dict(
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

# stage-wise ids (ConvNeXt's rule): downsampling layers 0, stage s -> s + 1, the rest num_layers + 1 (full lr);
# scale 0.9 ** (num_layers + 1 - id), the published constructor's values with its num_layers 6
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=6))
