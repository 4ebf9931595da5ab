# The segmentation demo (`make demo-seg`): UperNet with the smallest shift-wise backbone (ShiftWiseNet-atto,
# from scratch) on a generated data set in the ADE20K layout, on the CPU.
#
#   python tools/train_seg.py configs/seg/demo.py
#
# The data (label values 0 background, 1 square, 2 disk, 3 triangle; shapes in any colour on plain
# backgrounds, 128 px images; 300 training and 50 validation images) is written into
# work_dirs/demo-data/seg-shapes on first use, deterministically from the seed (swtasks/mm/demo.py).
# Progress is logged every 20 iterations; the validation set is evaluated (mIoU over the 4 classes) four
# times. At the end the run prints the mIoU reached and where the drawn predictions
# (work_dirs/demo-seg/predictions/) and the curves (curves.png) are.
# Goal: mIoU >= 0.7 on the validation images; README "Quick starts" states what it reaches.
_base_ = './upernet_shiftwise-tiny_4xb4-160k_ade20k-512x512.py'

custom_imports = dict(imports=['swtasks.mm', 'swtasks.mm.demo'], allow_failed_imports=False)

data_root = 'work_dirs/demo-data/seg-shapes'
demo_data = dict(kind='ade20k', root=data_root, seed=0, num_train=300, num_val=50, size=128)
work_dir = 'work_dirs/demo-seg'
classes = ('background', 'square', 'disk', 'triangle')
metainfo = dict(classes=classes)
crop_size = (128, 128)
dims = [40, 80, 160, 320]
max_iters = 500
data_preprocessor = dict(size=crop_size)

model = dict(
    data_preprocessor=data_preprocessor,
    # from scratch: the output LayerNorms become BatchNorms (swtasks.mm.demo.ShiftWiseNetBNOut says why)
    backbone=dict(
        type='ShiftWiseNetBNOut', arch='atto', drop_path_rate=0.0, layer_scale_init_value=1.0, sparse=False,
        init_cfg=None),
    decode_head=dict(in_channels=dims, channels=64, num_classes=len(classes)),
    auxiliary_head=dict(in_channels=dims[2], channels=32, num_classes=len(classes)),
    test_cfg=dict(_delete_=True, mode='whole'))

# plain label maps (0 is a class, not "other"): no reduce_zero_label, a dataset type without a fixed class list
dataset_type = 'BaseSegDataset'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='RandomFlip', prob=0.5),  # the shapes vary in size already: no scale augmentation in a short run
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=False),
    dict(type='PackSegInputs'),
]
dataset = dict(
    type=dataset_type,
    data_root=data_root,
    metainfo=metainfo,
    img_suffix='.jpg',
    seg_map_suffix='.png',
    reduce_zero_label=False)
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        dataset,
        data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        dataset,
        data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, betas=(0.9, 0.999), weight_decay=0.01))
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters // 4)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=40),
    dict(type='PolyLR', power=1.0, eta_min=1e-5, by_epoch=False, begin=40, end=max_iters),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False, window_size=20)
custom_hooks = [dict(type='DemoReportHook', metric='mIoU', goal=0.7, num_images=6, metric_scale=0.01)]
randomness = dict(seed=0)
# no fixed visualizer name: mmengine then names it after the run, so a second run in the same process (the
# tests) gets its own instance, writing its scalars (the curves' source) into its own log folder
visualizer = dict(_delete_=True, type='SegLocalVisualizer', vis_backends=[dict(type='LocalVisBackend')])
env_cfg = dict(cudnn_benchmark=False)
sync_bn = None  # plain BatchNorm (one process, CPU)
