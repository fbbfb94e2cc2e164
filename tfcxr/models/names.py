"""The names of the sub-models every tfcxr model is assembled from (one place; .keras files store them).

A baseline holds NORMALIZATION and CLASSIFIER; an autoencoder ENCODER and DECODER; an AECNN all four.
"""

ENCODER = "encoder"  # image [B,H,W,1] -> latent [B,H/4,W/4,1]
DECODER = "decoder"  # latent -> reconstruction [B,H,W,1]
CLASSIFIER = "classifier"  # ImageNet-normalized image [B,h,w,3] -> logits [B,L]
NORMALIZATION = "imagenet_normalization"  # gray [0, 1] image -> ImageNet-normalized 3 channels
