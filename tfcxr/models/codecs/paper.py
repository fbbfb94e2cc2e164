"""The paper's codec (--codec=paper): a stride-4 encoder to a [0, 1] latent image, a PixelShuffle decoder back.

Shapes follow the reference exactly (its PyTorch modules are read by torch_port.py):
896x896x1 -> 224x224x1 -> 896x896x1; any side that is a multiple of COMPRESSION works. So does
the initialisation: every convolution starts as PyTorch's nn.Conv2d does (layers.torch_initializers),
with two deliberate exceptions, explained at MID_GRAY below.
"""

from keras import layers, ops

from tfcxr.constants import COMPRESSION
from tfcxr.models.codecs.base import Codec, register_codec
from tfcxr.models.layers import PixelShuffle, clipped_relu, torch_initializers

# Two deliberate exceptions to PyTorch's initialisation, both about the clips' dead zones (the
# ClippedReLU passes no gradient outside (0, 1)):
# - The latent's bias starts around 0.5, the middle of the clip range, instead of PyTorch's 0. The
#   reference clipped only its output in stage 2; we also clip the latent (../shared/SPEC.md). With
#   PyTorch's bias the unclipped latent of a real radiograph sits at mean -0.3..+0.2 with a spread of
#   only ~0.05 over the image, so on many seeds every latent pixel starts at 0 and no gradient ever
#   reaches the encoder (docs/fidelity.md has the measurements).
# - The decoder's bias maps a mid-gray latent to mid-gray in each of its 16 sub-pixel phases:
#   bias = 0.5 - 0.5 * sum(kernel). With PyTorch's bias, about 7 of the 16 phases start entirely
#   outside (0, 1) on a real radiograph, and a phase that starts there never learns. Centred so, every
#   phase starts inside (0, 1) on the pixels of a radiograph (tests/test_models.py; docs/fidelity.md).
# The kernels stay exactly PyTorch's.
MID_GRAY = 0.5


@register_codec
class PaperCodec(Codec):
    """The reproduction's autoencoder (no parameters): 865 encoder and 160 decoder weights."""

    kind = "paper"

    def encode(self, image):
        # Explicit symmetric padding 2, as the reference's Conv2d(padding=2); "same" would pad 1/2.
        x = layers.ZeroPadding2D(2, name="encoder_pad")(image)  # [B,H+4,W+4,1]
        x = layers.Conv2D(32, 5, strides=COMPRESSION, activation="elu", name="encoder_conv",
                          **torch_initializers(1 * 5 * 5))(x)  # [B,H/4,W/4,32]
        x = layers.Conv2D(1, 1, name="encoder_project", **torch_initializers(32 * 1 * 1, MID_GRAY))(x)  # [B,H/4,W/4,1]
        return clipped_relu(name="latent_clip")(x)

    def decode(self, latent):
        conv = layers.Conv2D(COMPRESSION**2, 3, padding="same", name="decoder_conv", **torch_initializers(1 * 3 * 3))
        x = conv(latent)  # [B,h,w,16]
        conv.bias.assign(MID_GRAY - MID_GRAY * ops.sum(conv.kernel, axis=(0, 1, 2)))  # mid-gray in -> mid-gray out
        x = PixelShuffle(COMPRESSION, name="pixel_shuffle")(x)  # [B,4h,4w,1]
        return clipped_relu(name="reconstruction_clip")(x)
