# Shared runtime for dart_dense configs: mmengine's Runner with atomic checkpoints, iteration-based.
custom_imports = dict(imports=["dart_dense"], allow_failed_imports=False)
runner_type = "DartRunner"
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=50),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=8000, max_keep_ckpts=3),
    sampler_seed=dict(type="DistSamplerSeedHook"),
)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend="nccl"))
log_processor = dict(by_epoch=False)
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=0)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")
