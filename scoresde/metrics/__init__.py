"""Sample-quality metrics.

* points: sliced Wasserstein, MMD and the Frechet distance between point sets (2-D data, features).
* images: FID, KID, Inception Score and precision/recall of uint8 images, tensors, `.npz` files or
  folders, in the features of the FID Inception (the optional extra `scoresde[metrics]`) or a
  network of your own; `reference_statistics` caches a data set's features.

Importing this package loads no network: the Inception is loaded on the first call that needs it.
"""

from .features import ImageFeatures, image_features, reference_statistics
from .images import (KID, METRICS, InceptionScore, PrecisionRecall, fid, image_metrics, inception_score,
                     inception_score_of_logits, kernel_inception_distance, kid, manifold_precision_recall,
                     precision_recall)
from .inception import FeatureNetwork, fid_inception, load_feature_network, network_input
from .points import frechet_distance, gaussian_frechet_distance, mmd, sliced_wasserstein

__all__ = ["sliced_wasserstein", "mmd", "frechet_distance", "gaussian_frechet_distance", "fid", "kid",
           "inception_score", "precision_recall", "image_metrics", "METRICS", "KID", "InceptionScore",
           "PrecisionRecall", "kernel_inception_distance", "inception_score_of_logits",
           "manifold_precision_recall", "ImageFeatures", "image_features", "reference_statistics",
           "FeatureNetwork", "fid_inception", "load_feature_network", "network_input"]
