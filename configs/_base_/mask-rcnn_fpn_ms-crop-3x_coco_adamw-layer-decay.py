# What the published multi-scale-crop Mask R-CNN recipes share (configs/det/mask-rcnn_convnext-t_fpn_ms-crop-3x_coco.py,
# mask-rcnn_kw-resnet50-1x_fpn_ms-crop-1x_coco.py): MMDetection's ConvNeXt-T Mask R-CNN config from the installed
# package (heads, multi-scale training 480-800 with a DETR-style crop branch, 36 epochs with lr steps at 27 and
# 33), the swtasks.mm registrations, AdamW (lr 1e-4, wd 0.05) through the layer-decay constructor (each config
# states its decay in optim_wrapper.paramwise_cfg) in fp32 (the base's AmpOptimWrapper is replaced; `--amp`
# turns mixed precision back on), 16 images per batch (8 GPUs x 2).
#
# (mmengine refuses a key defined by two bases of one config, and MMDetection's config already defines
# optim_wrapper: so the shared optimiser block sits here, on top of the recipe it belongs to.)
_base_ = 'mmdet::convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py'

custom_imports = dict(imports=['swtasks.mm'], allow_failed_imports=False)

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05))

train_dataloader = dict(batch_size=2)
auto_scale_lr = dict(enable=False, base_batch_size=16)
