# UperNet + auxiliary FCN head with a KernelWarehouse ResNet-50 (1x) backbone on ADE20K.
# KernelWarehouse published no segmentation result: this is MMSegmentation's UperNet-R50 recipe unchanged
# (512x512 crops, 160k iterations, 16 images per batch (4 GPUs x 4), SGD lr 0.01 / momentum 0.9 / wd 5e-4,
# poly schedule (power 0.9), whole-image test) with the KW backbone swapped in, so that it compares with the plain
# ResNet-50 of that recipe. The attention temperature is fixed at 0 (dense-task fine-tuning).
_base_ = 'mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py'

custom_imports = dict(imports=['swtasks.mm'], allow_failed_imports=False)

pretrained = 'checkpoints/kw_resnet50_1x_in1k.pth'
chans = [256, 512, 1024, 2048]

model = dict(
    pretrained=None,  # the base config's ResNet weights; ours come through the backbone's init_cfg
    backbone=dict(
        _delete_=True,
        type='KWResNet',
        arch='resnet50_1x',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.0,
        frozen_stages=-1,
        norm_eval=False,
        with_cp=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    decode_head=dict(in_channels=chans, num_classes=150),
    auxiliary_head=dict(in_channels=chans[2], num_classes=150))

# BatchNorm (backbone, attention heads, decode heads) synchronised in distributed runs
sync_bn = 'torch'
