# CPU smoke configuration (used by the tests): UperNet with a test-sized SLaK (depths 1/1/2/1, widths
# 16/32/48/64, big kernels 13/11/9/7 with the published 5-wide strips) on the tiny ADE20K-format dataset of
# the shift-wise smoke run (64x64 images, 2 training iterations, then IoUMetric).
#
#   python -m swtasks.mm.testing ade20k data/tiny_ade
#   python tools/train_seg.py configs/seg/upernet_slak-tiny_2iter_tiny-ade20k-64x64.py --data-root data/tiny_ade
_base_ = './upernet_shiftwise-atto_2iter_tiny-ade20k-64x64.py'

dims = [16, 32, 48, 64]
model = dict(
    backbone=dict(
        _delete_=True,
        type='SLaK',
        arch=dict(base='t', depths=(1, 1, 2, 1), dims=tuple(dims), width_factor=1.0, kernel_sizes=(13, 11, 9, 7)),
        drop_path_rate=0.1,
        sparse=False,
        init_cfg=None),
    decode_head=dict(in_channels=dims),
    auxiliary_head=dict(in_channels=dims[2]))
# the SLaK recipe's stage-wise lr decay (configs/seg/upernet_slak-t_4xb4-160k_ade20k-512x512.py)
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=6))
