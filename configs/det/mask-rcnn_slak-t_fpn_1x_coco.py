# Mask R-CNN + FPN with a SLaK-T backbone, 1x schedule (12 epochs), COCO instance segmentation.
# Backbone and optimiser settings are those of the published SLaK-T COCO config (Cascade Mask R-CNN 3x:
# drop path 0.4, layer scale init 1.0, the checkpoint's sparsity pattern kept, AdamW lr 2e-4 / wd 0.05,
# layer-wise lr decay 0.7 over 6 layer ids, 16 images per batch); heads, data pipeline and the 1x schedule
# come from MMDetection's own Mask R-CNN config.
#
#   python tools/convert_checkpoint.py --source slak-official SLaK_tiny_checkpoint.pth \
#       checkpoints/slak_t_in1k.pth --model slak_t
#   python tools/train_det.py configs/det/mask-rcnn_slak-t_fpn_1x_coco.py
_base_ = '../_base_/mask-rcnn_fpn_1x_coco_adamw-layer-decay.py'  # AdamW, SyncBN, batch 16

pretrained = 'checkpoints/slak_t_in1k.pth'
dims = [124, 249, 499, 998]  # ConvNeXt-T widths x 1.3

model = dict(
    backbone=dict(
        _delete_=True,
        type='SLaK',
        arch='t',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.4,
        layer_scale_init_value=1.0,
        frozen_stages=-1,
        norm_eval=False,
        with_cp=False,
        sparse=True,  # zero weights of the sparse SLaK checkpoint stay zero while fine-tuning
        deploy=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=dims))

# layer ids of the ConvNeXt layout with num_layers=6: stem 0, stage 1 -> 1, stage 2 / downsampling 2 -> 2,
# downsampling 3 -> 3, stage 3 block b -> 3 + b // 3, stage 4 / downsampling 4 -> 6; the rest 7 (full lr)
optim_wrapper = dict(
    optimizer=dict(lr=2e-4), paramwise_cfg=dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6))
