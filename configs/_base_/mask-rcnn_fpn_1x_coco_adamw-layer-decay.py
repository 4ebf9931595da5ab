# What the Mask R-CNN + FPN 1x COCO recipes of this toolkit share (configs/det/mask-rcnn_{shiftwise-tiny,slak-t,
# unireplknet-t}_fpn_1x_coco.py): MMDetection's own Mask R-CNN 1x config from the installed package (heads,
# data pipeline, 12 epochs), the swtasks.mm registrations, AdamW (lr 1e-4, wd 0.05) through the layer-decay
# constructor (each config states its decay in optim_wrapper.paramwise_cfg), SyncBN in distributed runs and a
# total batch of 16 (8 GPUs x 2 images; `--auto-scale-lr` scales the lr for other sizes).
#
# (mmengine refuses a key defined by two bases of one config, and MMDetection's config already defines
# optim_wrapper: so the shared optimiser block sits here, on top of the recipe it belongs to.)
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['swtasks.mm'], allow_failed_imports=False)

# the backbone's BatchNorms see 2 images per GPU: synchronised in distributed runs (mmengine converts the model
# when the launcher is pytorch/slurm; single-process runs keep plain BN)
sync_bn = 'torch'

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05))

auto_scale_lr = dict(enable=False, base_batch_size=16)
