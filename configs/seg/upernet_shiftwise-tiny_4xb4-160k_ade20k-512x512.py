# The paper's ADE20K recipe: UperNet (pool scales 1,2,3,6; 512 channels) + auxiliary FCN head on stage
# index 2 (loss weight 0.4) with a ShiftWiseNet-T backbone; 512x512 crops, 160k iterations, 16 images per
# batch (4 GPUs x 4), AdamW lr 1e-4 / wd 0.05, poly schedule (power 1.0) after 1500 linear warm-up
# iterations, sliding-window test (crop 512, stride 341), drop path 0.4.
# Shared with the other AdamW UperNet recipes (configs/_base_/upernet_160k_ade20k_adamw-layer-decay.py):
# MMSegmentation's own UperNet config from the installed package, AdamW, the schedule, the batch size, SyncBN.
#
# Data: data/ade/ADEChallengeData2016/{images,annotations}/{training,validation} (see data/README.md).
_base_ = '../_base_/upernet_160k_ade20k_adamw-layer-decay.py'

pretrained = 'checkpoints/shiftwise_tiny_in1k.pth'
dims = [80, 160, 320, 640]
crop_size = (512, 512)

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
    decode_head=dict(in_channels=dims, num_classes=150),
    auxiliary_head=dict(in_channels=dims[2], num_classes=150),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))

# The reference recipe states no layer-wise lr decay for ADE20K: rate 1.0 gives every parameter the base lr
# (num_layers is then irrelevant); the constructor still takes weight decay off biases, norms, layer scales
# and GRN. `--cfg-options optim_wrapper.paramwise_cfg.decay_rate=0.9` turns decay on (layer ids: docs/detection-segmentation.md).
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=1.0, decay_type='layer_wise', num_layers=9))
