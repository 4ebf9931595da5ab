# CPU smoke configuration (used by the tests): Mask R-CNN with a test-sized UniRepLKNet (depths 1/1/2/1,
# dims 16/32/48/64, every block kind: 3x3, 13x13 and 7x7 Dilated Reparam Blocks) on a tiny COCO-format
# dataset of 64x64 images, 2 training iterations, then COCO bbox + segm evaluation.
#
#   python -m swtasks.mm.testing coco data/tiny_coco
#   python tools/train_det.py configs/det/mask-rcnn_unireplknet-tiny_fpn_2iter_tiny-coco.py --data-root data/tiny_coco
_base_ = './mask-rcnn_unireplknet-t_fpn_1x_coco.py'

data_root = 'data/tiny_coco/'
classes = ('square', 'disk')
metainfo = dict(classes=classes)
dims = [16, 32, 48, 64]
width = 32  # FPN / head width (256 in the real configs)

model = dict(
    backbone=dict(
        arch=dict(
            _delete_=True, base='a', depths=(1, 1, 2, 1), dims=(16, 32, 48, 64),
            kernel_sizes=(3, 13, (13, 3), 7)),
        drop_path_rate=0.1, init_cfg=None),
    neck=dict(in_channels=dims, out_channels=width),
    rpn_head=dict(in_channels=width, feat_channels=width),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=width),
        bbox_head=dict(in_channels=width, fc_out_channels=64, num_classes=len(classes)),
        mask_roi_extractor=dict(out_channels=width),
        mask_head=dict(in_channels=width, conv_out_channels=width, num_classes=len(classes))),
    # keep every detection so that bbox and segm results exist even for an untrained model
    test_cfg=dict(rcnn=dict(score_thr=0.0, max_per_img=20)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

# 2 iterations, no validation inside training (call runner.val() / tools/test_det.py afterwards)
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=2, val_interval=2, val_begin=3)
param_scheduler = [dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0, end=2)]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=1),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=2))
log_processor = dict(by_epoch=False)
env_cfg = dict(cudnn_benchmark=False)
# plain BatchNorm even under a distributed launcher (SyncBN needs GPUs; `--cfg-options sync_bn=torch`)
sync_bn = None
