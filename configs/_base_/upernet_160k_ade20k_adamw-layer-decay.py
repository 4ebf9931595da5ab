# What the UperNet ADE20K recipes with AdamW share (configs/seg/upernet_{shiftwise-tiny,slak-t,unireplknet-t}_
# 4xb4-160k_ade20k-512x512.py): MMSegmentation's UperNet-R50 config from the installed package (UperNet with pool
# scales 1/2/3/6 and 512 channels, auxiliary FCN head on stage index 2, 512x512 crops, 160k iterations), the
# swtasks.mm registrations, AdamW (lr 1e-4, wd 0.05) through the layer-decay constructor (each config states its
# decay in optim_wrapper.paramwise_cfg), linear warm-up over 1500 iterations then poly (power 1.0), 16 images per
# batch (4 GPUs x 4), SyncBN in distributed runs.
#
# (mmengine refuses a key defined by two bases of one config, and MMSegmentation's config already defines
# optim_wrapper and param_scheduler: so the shared blocks sit here, on top of the recipe they belong to.)
_base_ = 'mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py'

custom_imports = dict(imports=['swtasks.mm'], allow_failed_imports=False)

model = dict(pretrained=None)  # the base config's ResNet weights; ours come through the backbone's init_cfg

sync_bn = 'torch'

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    constructor='LayerDecayOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05))

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, begin=1500, end=160000, eta_min=0.0, by_epoch=False),
]

train_dataloader = dict(batch_size=4)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
