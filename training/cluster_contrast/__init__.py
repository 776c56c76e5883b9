"""Cluster contrast (USL / UDA): the clustering, the cluster memory and the step
(:class:`~training.cluster_contrast.step.ClusterContrastTrainer`)."""
