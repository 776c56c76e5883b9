"""The PASS part-aware ViT: the backbone (timm's ``VisionTransformer`` with three [PART] tokens), its
transformers classes (configuration, models, image processor), the timm registrations, and its weights: reading
every original layout (``convert``), writing hub folders and model cards."""
