# COCO 2017 detection in its release layout:
#   data_root/annotations/instances_{train,val}2017.json, data_root/{train,val}2017/*.jpg
# Images are fed at their own size: the model's warp resamples them onto its fixed grid.
data_root = "data/coco"
train_dataloader = dict(
    batch_size=8,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    collate_fn=dict(type="dense_collate"),
    dataset=dict(type="CocoDetDataset", ann_file=data_root + "/annotations/instances_train2017.json",
                 img_dir=data_root + "/train2017", flip_prob=0.5),
)
val_dataloader = dict(
    batch_size=2,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    collate_fn=dict(type="dense_collate"),
    dataset=dict(type="CocoDetDataset", ann_file=data_root + "/annotations/instances_val2017.json",
                 img_dir=data_root + "/val2017"),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="CocoBoxMetric", ann_file=data_root + "/annotations/instances_val2017.json")
test_evaluator = val_evaluator
