# CPU smoke configuration (used by the tests): UperNet with the KernelWarehouse MobileNetV2-0.5 (1/2x) on the
# tiny ADE20K-format dataset of the shift-wise smoke run (64x64 crops, 2 iterations), batch 2 with
# norm_eval=False (the attention heads' BatchNorm trains), temperature 0.
#
#   python -m swtasks.mm.testing ade20k data/tiny_ade
#   python tools/train_seg.py configs/seg/upernet_kw-mobilenetv2-050-1d2x_2iter_tiny-ade20k-64x64.py --data-root data/tiny_ade
_base_ = './upernet_shiftwise-atto_2iter_tiny-ade20k-64x64.py'

chans = [16, 16, 48, 1280]
model = dict(
    backbone=dict(
        _delete_=True,
        type='KWMobileNetV2',
        arch='mobilenetv2_050_1d2x',
        frozen_stages=-1,
        norm_eval=False,
        init_cfg=None),
    decode_head=dict(in_channels=chans),
    auxiliary_head=dict(in_channels=chans[2]))
