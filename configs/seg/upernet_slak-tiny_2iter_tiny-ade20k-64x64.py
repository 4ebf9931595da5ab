# CPU smoke configuration (used by the tests): UperNet with a test-sized SLaK (depths 1/1/2/1, widths
# 16/32/48/64, big kernels 13/11/9/7 with the published 5-wide strips) on a tiny ADE20K-format dataset of
# 64x64 images, 2 training iterations, then IoUMetric.
#
#   python -m swtasks.mm.testing ade20k data/tiny_ade
#   python tools/train_seg.py configs/seg/upernet_slak-tiny_2iter_tiny-ade20k-64x64.py --data-root data/tiny_ade
_base_ = './upernet_slak-t_4xb4-160k_ade20k-512x512.py'

data_root = 'data/tiny_ade'
crop_size = (64, 64)
dims = [16, 32, 48, 64]
data_preprocessor = dict(size=crop_size)

model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch=dict(
            _delete_=True, base='t', depths=(1, 1, 2, 1), dims=(16, 32, 48, 64), width_factor=1.0,
            kernel_sizes=(13, 11, 9, 7)),
        drop_path_rate=0.1, sparse=False, init_cfg=None),
    decode_head=dict(in_channels=dims, channels=32),
    auxiliary_head=dict(in_channels=dims[2], channels=16),
    test_cfg=dict(_delete_=True, mode='whole'))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(128, 64), ratio_range=(0.75, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 64), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=2, val_interval=2, val_begin=3)
param_scheduler = [dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0, end=2)]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=1, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=2))
env_cfg = dict(cudnn_benchmark=False)
# plain BatchNorm even under a distributed launcher (SyncBN needs GPUs; `--cfg-options sync_bn=torch`)
sync_bn = None
