# Mask R-CNN + FPN with a UniRepLKNet-T backbone, 1x schedule (12 epochs), COCO instance segmentation.
# Backbone and optimiser settings are those of the published UniRepLKNet-T COCO config (Cascade Mask R-CNN
# 3x: drop path 0.3, AdamW lr 1e-4 / wd 0.05, layer-wise lr decay 0.8 over 12 layer ids, 16 images per
# batch); heads, data pipeline and the 1x schedule come from MMDetection's own Mask R-CNN config.
#
#   python tools/convert_checkpoint.py --source unireplknet-official unireplknet_t_in1k_224_acc83.21.pth \
#       checkpoints/unireplknet_t_in1k.pth --model unireplknet_t
#   python tools/train_det.py configs/det/mask-rcnn_unireplknet-t_fpn_1x_coco.py
#
# (the published file also loads directly: the family's layout is read by every loader)
_base_ = '../_base_/mask-rcnn_fpn_1x_coco_adamw-layer-decay.py'  # AdamW lr 1e-4 / wd 0.05, batch 16

pretrained = 'checkpoints/unireplknet_t_in1k.pth'
dims = [80, 160, 320, 640]

model = dict(
    backbone=dict(
        _delete_=True,
        type='UniRepLKNet',
        arch='t',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.3,
        layer_scale_init_value=1e-6,  # the published backbone's default; the checkpoint's values replace it
        frozen_stages=-1,
        norm_eval=False,
        with_cp=False,  # the published config checkpoints activations (with_cp=True) to save GPU memory
        deploy=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=dims))

# SyncBN in distributed runs (from the base; the published backbone always used SyncBN there)
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.8, decay_type='layer_wise', num_layers=12))
