"""Image size limits, checked from the header BEFORE decoding: PNG IHDR, JPEG SOF.

A 0.4 MB PNG can declare 20,000 x 20,000 pixels; decoding it costs 400 MB and 50x the time of
a real radiograph. Every entry point that decodes user images reads the declared size first and
refuses more than max_side pixels a side or max_pixels in all (constants.MAX_IMAGE_SIDE,
MAX_IMAGE_PIXELS by default):

- in Python (`check_bytes`; the sharder, tools/cxr_codec.py, --mode=explain --images), with the
  standard library only: the sharder's worker processes and tools need no TensorFlow for it;
  `read_gray` reads an image file to gray pixels after that check (the codec, --images);
- in the graph (`assert_within_limits`; the SavedModel's image_bytes signatures): the PNG
  header bytes through tf.strings.substr + tf.io.decode_raw, JPEG through
  tf.image.extract_jpeg_shape (libjpeg's header reader: no pixel is decoded).

Bytes that are neither PNG nor JPEG, or whose header is cut short, pass the check: their
decoder refuses them with its own error.
"""

import re
import struct
import zlib

from tfcxr.constants import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
PNG_HEADER_BYTES = 24  # signature (8), IHDR length (4) and type (4), width (4), height (4)
# Start-of-frame markers (baseline, extended, progressive, lossless, arithmetic): they carry the size.
JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # not DHT, JPG, DAC
JPEG_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD8)])  # TEM, RST0-7: no length field


class ImageTooLarge(ValueError):
    """The header declares more pixels than the limit; the message says how many."""


def png_size(data: bytes):
    """(width, height) from a PNG's IHDR, or None when `data` is not a PNG with a whole IHDR."""
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR" or len(data) < PNG_HEADER_BYTES:
        return None
    return struct.unpack(">II", data[16:24])


def jpeg_sof_offset(data: bytes):
    """Offset of a JPEG's first SOF marker (FF Cx), or None when there is none before the scan."""
    if not data.startswith(JPEG_SIGNATURE):
        return None
    offset = 2  # after SOI
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            return None  # not at a marker: corrupt
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
        elif marker in JPEG_STANDALONE_MARKERS:
            offset += 2
        elif marker in JPEG_SOF_MARKERS:
            return offset
        elif marker in (0xD9, 0xDA):  # EOI, SOS: no frame header before the data
            return None
        else:
            (length,) = struct.unpack(">H", data[offset + 2:offset + 4])
            offset += 2 + length
    return None


def jpeg_size(data: bytes):
    """(width, height) from a JPEG's first SOF segment, or None."""
    offset = jpeg_sof_offset(data)
    if offset is None or offset + 9 > len(data):
        return None
    height, width = struct.unpack(">HH", data[offset + 5:offset + 9])  # after marker, length (2), precision (1)
    return width, height


def declared_size(data: bytes):
    """(width, height) that a PNG or JPEG header declares; None for anything else."""
    return png_size(data) or jpeg_size(data)


def too_large(width: int, height: int, max_side: int = MAX_IMAGE_SIDE, max_pixels: int = MAX_IMAGE_PIXELS):
    return max(width, height) > max_side or width * height > max_pixels


def limit_message(width, height, max_side, max_pixels):
    return (f"declares {width}x{height} pixels (width x height), above the limit of {max_side} a side "
            f"and {max_pixels} pixels")


def check_bytes(data: bytes, max_side: int = MAX_IMAGE_SIDE, max_pixels: int = MAX_IMAGE_PIXELS):
    """-> the declared (width, height), or None (not PNG / JPEG); ImageTooLarge above the limits."""
    size = declared_size(data)
    if size and too_large(*size, max_side, max_pixels):
        raise ImageTooLarge(limit_message(*size, max_side, max_pixels))
    return size


def blank_png(width: int, height: int, bit_depth: int = 1) -> bytes:
    """A valid all-black grayscale PNG of any size, written row by row without holding its pixels.

    What the limits are tested and measured with: 20,000 x 20,000 is 49 KB at 1 bit, 0.39 MB at 8.
    """
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width * bit_depth + 7) // 8)  # filter byte + packed pixels
    deflate = zlib.compressobj(9)
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)  # gray, deflate, no interlace
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_declaring(data: bytes, width: int, height: int) -> bytes:
    """A JPEG's bytes with its SOF rewritten to declare width x height (its scan no longer fits)."""
    offset = jpeg_sof_offset(data)
    return data[:offset + 5] + struct.pack(">HH", height, width) + data[offset + 9:]


# With TensorFlow. It is imported here, not at the top: the Python check above stays
# TensorFlow-free for the sharder's workers and tools.

class ImageFileError(ValueError):
    """An image file refused: not a readable PNG / JPEG, or above the limits. The message starts with its path."""


def read_gray(path, max_side: int = MAX_IMAGE_SIDE, max_pixels: int = MAX_IMAGE_PIXELS):
    """Any PNG / JPEG file (gray, RGB, RGBA, 8 or 16 bit) -> uint8 [H, W, 1], as tf.io.decode_image makes it gray.

    A header declaring more than max_side pixels a side or max_pixels in all is refused
    (ImageFileError) before decoding; so is a file that is not a readable PNG or JPEG.
    """
    import tensorflow as tf

    try:
        data = tf.io.read_file(str(path))
        check_bytes(data.numpy(), max_side, max_pixels)
        return tf.io.decode_image(data, channels=1, expand_animations=False)  # 16 bit -> 8 bit too
    except ImageTooLarge as error:
        raise ImageFileError(f"{path}: {error}") from None
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as error:
        reason = re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:.*", "", error.message.splitlines()[0])  # TF's op decoration
        raise ImageFileError(f"{path}: not a readable PNG or JPEG image ({reason})") from None


def graph_declared_size(image_bytes):
    """string scalar -> int64 [2] (height, width) from the PNG IHDR or JPEG SOF; [0, 0] otherwise."""
    import tensorflow as tf

    head = tf.strings.substr(image_bytes, 0, PNG_HEADER_BYTES)  # shorter when the bytes are
    head = tf.strings.substr(tf.strings.join([head, b"\0" * PNG_HEADER_BYTES]), 0, PNG_HEADER_BYTES)
    header = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)  # [24]
    big_endian = tf.constant([2**24, 2**16, 2**8, 1], tf.int64)
    png = tf.stack([tf.reduce_sum(header[20:24] * big_endian), tf.reduce_sum(header[16:20] * big_endian)])
    is_png = tf.logical_and(tf.strings.substr(head, 0, len(PNG_SIGNATURE)) == PNG_SIGNATURE,
                            tf.strings.substr(head, 12, 4) == b"IHDR")
    is_jpeg = tf.strings.substr(head, 0, len(JPEG_SIGNATURE)) == JPEG_SIGNATURE
    return tf.cond(is_png, lambda: png, lambda: tf.cond(
        is_jpeg, lambda: tf.cast(tf.image.extract_jpeg_shape(image_bytes)[:2], tf.int64),  # header only
        lambda: tf.zeros([2], tf.int64)))


def assert_within_limits(image_bytes, index, max_side, max_pixels, name="image"):
    """An assert op: fails with InvalidArgumentError '<name>: image <index> declares WxH pixels ...'."""
    import tensorflow as tf

    height, width = tf.unstack(graph_declared_size(image_bytes))
    max_side, max_pixels = tf.cast(max_side, tf.int64), tf.cast(max_pixels, tf.int64)
    within = tf.logical_and(tf.maximum(height, width) <= max_side, height * width <= max_pixels)
    message = tf.strings.format(f"{name}: image {{}} " + limit_message("{}", "{}", "{}", "{}"),
                                [index, width, height, max_side, max_pixels])
    return tf.debugging.Assert(within, [message])
