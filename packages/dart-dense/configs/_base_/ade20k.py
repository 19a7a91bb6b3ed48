# ADE20K (SceneParsing, 150 classes) in its release layout:
#   data_root/images/{training,validation}/*.jpg, data_root/annotations/{training,validation}/*.png
# Images are fed at their own size: the model's warp resamples them onto its fixed grid.
data_root = "data/ADEChallengeData2016"
num_classes = 150
classes = [f"class_{index}" for index in range(1, 151)]
dataset_common = dict(type="SegFolderDataset", data_root=data_root, classes=classes, reduce_zero_label=True)
train_dataloader = dict(
    batch_size=8,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    collate_fn=dict(type="dense_collate"),
    dataset=dict(dataset_common, split="training", flip_prob=0.5),
)
val_dataloader = dict(
    batch_size=1,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    collate_fn=dict(type="dense_collate"),
    dataset=dict(dataset_common, split="validation"),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="MeanIoU", num_classes=num_classes)
test_evaluator = val_evaluator
