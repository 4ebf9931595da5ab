# CPU smoke configuration (used by the tests): UperNet with a small KernelWarehouse ConvNeXt (depths 1/1/1/1,
# dims 16/32/64/128, 1x warehouses) on the tiny ADE20K-format dataset of the shift-wise smoke run (64x64
# crops, 2 iterations), temperature 0, with ConvNeXt's stage-wise lr decay.
#
#   python -m swtasks.mm.testing ade20k data/tiny_ade
#   python tools/train_seg.py configs/seg/upernet_kw-convnext-cpu_2iter_tiny-ade20k-64x64.py --data-root data/tiny_ade
_base_ = './upernet_shiftwise-atto_2iter_tiny-ade20k-64x64.py'

dims = [16, 32, 64, 128]
model = dict(
    backbone=dict(
        _delete_=True,
        type='KWConvNeXt',
        arch=dict(base='convnext_t_1x', depths=(1, 1, 1, 1), dims=tuple(dims)),
        drop_path_rate=0.1,
        layer_scale_init_value=1.0,
        init_cfg=None),
    decode_head=dict(in_channels=dims),
    auxiliary_head=dict(in_channels=dims[2]))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=6))
