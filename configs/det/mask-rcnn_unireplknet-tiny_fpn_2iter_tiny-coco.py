# CPU smoke configuration (used by the tests): Mask R-CNN with a test-sized UniRepLKNet (depths 1/1/2/1,
# dims 16/32/48/64, every block kind: 3x3, 13x13 and 7x7 Dilated Reparam Blocks) on the tiny COCO-format
# dataset of the shift-wise smoke run (64x64 images, 2 training iterations, then COCO bbox + segm).
#
#   python -m swtasks.mm.testing coco data/tiny_coco
#   python tools/train_det.py configs/det/mask-rcnn_unireplknet-tiny_fpn_2iter_tiny-coco.py --data-root data/tiny_coco
_base_ = './mask-rcnn_shiftwise-atto_fpn_2iter_tiny-coco.py'

dims = [16, 32, 48, 64]
model = dict(
    backbone=dict(
        _delete_=True,
        type='UniRepLKNet',
        arch=dict(base='a', depths=(1, 1, 2, 1), dims=tuple(dims), kernel_sizes=(3, 13, (13, 3), 7)),
        drop_path_rate=0.1,
        layer_scale_init_value=1e-6,
        init_cfg=None),
    neck=dict(in_channels=dims))
