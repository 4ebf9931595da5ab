# The detection demo (`make demo-det`): Mask R-CNN + FPN with the smallest shift-wise backbone
# (ShiftWiseNet-atto, from scratch) on a generated data set in the COCO 2017 layout, on the CPU.
#
#   python tools/train_det.py configs/det/demo.py
#
# The data (three classes, square / disk / triangle, in any colour on plain backgrounds, 128 px images; 400
# training and 60 validation images) is written into work_dirs/demo-data/det-shapes on first use,
# deterministically from the seed (swtasks/mm/demo.py). Progress is logged every 20 iterations; the
# validation set is evaluated (COCO box and mask AP) twice. At the end the run prints the box AP reached
# and where the drawn predictions (work_dirs/demo-det/predictions/) and the curves (curves.png) are.
# Goal: box AP >= 0.5 on the validation images; README "Quick starts" states what it reaches.
_base_ = './mask-rcnn_shiftwise-tiny_fpn_1x_coco.py'

custom_imports = dict(imports=['swtasks.mm', 'swtasks.mm.demo'], allow_failed_imports=False)

data_root = 'work_dirs/demo-data/det-shapes/'
demo_data = dict(kind='coco', root=data_root, seed=0, num_train=400, num_val=60, size=128)
work_dir = 'work_dirs/demo-det'
classes = ('square', 'disk', 'triangle')
metainfo = dict(classes=classes)
dims = [40, 80, 160, 320]
width = 64  # FPN and head width (256 in the real configs)
max_iters = 200

model = dict(
    # from scratch: the output LayerNorms become BatchNorms (swtasks.mm.demo.ShiftWiseNetBNOut says why)
    backbone=dict(
        type='ShiftWiseNetBNOut', arch='atto', drop_path_rate=0.0, layer_scale_init_value=1.0, sparse=False,
        init_cfg=None),
    neck=dict(in_channels=dims, out_channels=width),
    rpn_head=dict(
        in_channels=width,
        feat_channels=width,
        # anchors of 20, 40, 80, ... px for shapes of 18-56 px (the default 8 gives 32, 64, ...)
        anchor_generator=dict(scales=[5])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=width),
        bbox_head=dict(in_channels=width, fc_out_channels=256, num_classes=len(classes)),
        mask_roi_extractor=dict(out_channels=width),
        mask_head=dict(in_channels=width, conv_out_channels=width, num_classes=len(classes))),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=500, max_per_img=200),
        rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=200), rcnn=dict(max_per_img=20)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    # after Resize: the ground truth stays in the original frame (the pictures draw it beside the predictions)
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    batch_sampler=None,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05),
    # Adam moves every weight by about lr per step, so a layer's output moves by about lr x its fan-in x its
    # input's scale: the heads (fan-in up to 3136, FPN features without normalisation) need the lr of
    # MMDetection's AdamW recipes; the backbone (normalised throughout, small fan-ins), learning from
    # scratch, takes 5x that
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=5.0)}),
    clip_grad=dict(max_norm=10.0))
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters // 2)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=40),
    dict(type='CosineAnnealingLR', T_max=max_iters - 40, eta_min=1e-5, by_epoch=False, begin=40, end=max_iters),
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=20, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False, window_size=20)
custom_hooks = [dict(type='DemoReportHook', metric='coco/bbox_mAP', goal=0.5, num_images=6, score_thr=0.5)]
randomness = dict(seed=0)
# no fixed visualizer name: mmengine then names it after the run, so a second run in the same process (the
# tests) gets its own instance, writing its scalars (the curves' source) into its own log folder
visualizer = dict(_delete_=True, type='DetLocalVisualizer', vis_backends=[dict(type='LocalVisBackend')])
env_cfg = dict(cudnn_benchmark=False)
sync_bn = None  # plain BatchNorm (one process, CPU)
auto_scale_lr = dict(enable=False, base_batch_size=8)
