"""Image size limits, checked on the size the decoder will decode, read from the header BEFORE decoding.

A 0.4 MB PNG can declare 20,000 x 20,000 pixels; decoding it costs 400 MB and 50x the time of
a real radiograph. Every entry point that decodes user images reads the declared size first, the
way its decoder reads it, and refuses more than max_side pixels a side or max_pixels in all
(constants.MAX_IMAGE_SIDE, MAX_IMAGE_PIXELS by default):

- in Python (`check_bytes`; the sharder, tools/cxr_codec.py, --mode=explain --images), without
  TensorFlow (the sharder's worker processes need none):
  PNG: every IHDR before the image data, wherever it stands (PIL reads past chunks before IHDR
  and keeps the last IHDR; libpng reads the first);
  JPEG: every frame header (SOF) before the scan, markers found as libjpeg and PIL find them
  (stray bytes between segments skipped, 0xFF fill passed over);
  any other format PIL opens (BMP, GIF, WebP, TIFF, ...): PIL's Image.open, which reads the
  header only (its .size is what .load() decodes). The sharder checks that .size again on the
  image it opens, before .load(). `read_gray` (the codec, --images) decodes PNG and JPEG only
  and refuses any other format by content, after the size check;
- in the graph (`assert_within_limits`; the SavedModel's image_bytes signatures), where the
  decoders are libpng and libjpeg: a PNG must start with its IHDR (libpng reads no other; a PNG
  that does not is refused), whose size is read with tf.strings.substr + tf.io.decode_raw; a
  JPEG's through tf.image.extract_jpeg_shape (libjpeg's own header reader: no pixel is
  decoded); anything else is refused. `assert_shape_within_limits` checks float inputs
  (predict_images' images, reconstruct's latent) on their shape alone, before any work.

Bytes whose header cannot be read (cut short, no frame header) pass the Python check: their
decoder refuses them with its own error, before allocating any image.
"""

import io
import re
import struct
import warnings
import zlib

from PIL import Image, UnidentifiedImageError

from tfcxr.constants import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE
from tfcxr.data import pixels

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SIGNATURE = b"\xff\xd8\xff"
PNG_HEADER_BYTES = 24  # signature (8), IHDR length (4) and type (4), width (4), height (4)
PNG_END_OF_HEADER = (b"IDAT", b"IEND")  # chunks after which no IHDR is read
# Start-of-frame markers (baseline, extended, progressive, lossless, arithmetic): they carry the size.
JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # not DHT, JPG, DAC
JPEG_STANDALONE_MARKERS = frozenset([0x00, 0x01, *range(0xD0, 0xD9)])  # stuffed 0, TEM, RST0-7, SOI: no length
JPEG_END_OF_HEADER = (0xD9, 0xDA)  # EOI, SOS: no frame header after them
# libjpeg's next_marker: skip bytes that are not 0xFF, then any run of 0xFF; the byte after is the marker.
JPEG_MARKER = re.compile(rb"\xff+([^\xff])")


class ImageTooLarge(ValueError):
    """The header declares more pixels than the limit; the message says how many."""


def png_sizes(data: bytes):
    """[(width, height)] of every IHDR before a PNG's image data (PIL decodes the last, libpng the first)."""
    if not data.startswith(PNG_SIGNATURE):
        return []
    sizes, offset = [], len(PNG_SIGNATURE)
    while offset + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if kind == b"IHDR" and offset + 16 <= len(data):
            sizes.append(struct.unpack(">II", data[offset + 8:offset + 16]))
        if kind in PNG_END_OF_HEADER:
            break
        offset += 12 + length  # length, type, data, CRC
    return sizes


def jpeg_segments(data: bytes):
    """(marker, offset of its length field) of each segment before a JPEG's scan, found as libjpeg finds them."""
    if not data.startswith(JPEG_SIGNATURE):
        return
    offset = 2  # after SOI
    while (found := JPEG_MARKER.search(data, offset)) is not None:
        marker, offset = found[1][0], found.end()
        if marker in JPEG_END_OF_HEADER or offset + 2 > len(data):
            return
        if marker not in JPEG_STANDALONE_MARKERS:
            yield marker, offset
            offset += max(2, struct.unpack(">H", data[offset:offset + 2])[0])


def jpeg_sizes(data: bytes):
    """[(width, height)] of every SOF before a JPEG's scan (libjpeg decodes the first, PIL the last)."""
    sizes = []
    for marker, offset in jpeg_segments(data):
        if marker in JPEG_SOF_MARKERS and offset + 7 <= len(data):
            height, width = struct.unpack(">HH", data[offset + 3:offset + 7])  # after length (2), precision (1)
            sizes.append((width, height))
    return sizes


def is_png_or_jpeg(data: bytes) -> bool:
    return data.startswith(PNG_SIGNATURE) or data.startswith(JPEG_SIGNATURE)


def pil_size(data: bytes, max_side: int = MAX_IMAGE_SIDE, max_pixels: int = MAX_IMAGE_PIXELS):
    """(width, height) that PIL's Image.open reads from the header (no pixel decoded); None if PIL cannot open it.

    Above PIL's own bomb limit (2 x Image.MAX_IMAGE_PIXELS) Image.open refuses before telling the
    size: ImageTooLarge with PIL's pixel count.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit is lower
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(f"{error} (above the limit of {max_side} a side and {max_pixels} pixels)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError):
        return None


def declared_sizes(data: bytes, max_side: int = MAX_IMAGE_SIDE, max_pixels: int = MAX_IMAGE_PIXELS):
    """[(width, height)] the header declares: PNG / JPEG parsed here; any other format PIL's header size."""
    if data.startswith(PNG_SIGNATURE):
        return png_sizes(data)
    if data.startswith(JPEG_SIGNATURE):
        return jpeg_sizes(data)
    size = pil_size(data, max_side, max_pixels)
    return [size] if size else []


def declared_size(data: bytes):
    """(width, height) of a PNG's first IHDR or a JPEG's first SOF (what libpng / libjpeg decode); None otherwise."""
    sizes = png_sizes(data) or jpeg_sizes(data)
    return sizes[0] if sizes else None


def too_large(width: int, height: int, max_side: int = MAX_IMAGE_SIDE, max_pixels: int = MAX_IMAGE_PIXELS):
    return max(width, height) > max_side or width * height > max_pixels


def limit_message(width, height, max_side, max_pixels, verb="declares"):
    return (f"{verb} {width}x{height} pixels (width x height), above the limit of {max_side} a side "
            f"and {max_pixels} pixels")


def check_size(width: int, height: int, max_side: int = MAX_IMAGE_SIDE, max_pixels: int = MAX_IMAGE_PIXELS):
    """ImageTooLarge when width x height is above the limits."""
    if too_large(width, height, max_side, max_pixels):
        raise ImageTooLarge(limit_message(width, height, max_side, max_pixels))


def check_bytes(data: bytes, max_side: int = MAX_IMAGE_SIDE, max_pixels: int = MAX_IMAGE_PIXELS):
    """-> the declared (width, height), or None (no readable header); ImageTooLarge above the limits.

    Every size the header declares is checked (a PNG's IHDRs, a JPEG's SOFs: whichever its decoder takes).
    """
    sizes = declared_sizes(data, max_side, max_pixels)
    for size in sizes:
        check_size(*size, max_side, max_pixels)
    return sizes[0] if sizes else None


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
    """A JPEG's bytes with its first SOF rewritten to declare width x height (its scan no longer fits)."""
    offset = next(offset for marker, offset in jpeg_segments(data) if marker in JPEG_SOF_MARKERS)
    return data[:offset + 3] + struct.pack(">HH", height, width) + data[offset + 7:]


# With TensorFlow. It is imported here, not at the top: the Python check above stays
# TensorFlow-free for the sharder's workers and tools.

class ImageFileError(ValueError):
    """An image file refused: not a readable PNG / JPEG, or above the limits. The message starts with its path."""


def checked_bytes(path, max_side: int = MAX_IMAGE_SIDE, max_pixels: int = MAX_IMAGE_PIXELS) -> bytes:
    """The bytes of a PNG / JPEG file whose header declares no more than the limits; ImageFileError naming
    the file otherwise. Nothing is decoded: what a tool checks of every input before it loads a model."""
    import tensorflow as tf

    try:
        data = tf.io.read_file(str(path)).numpy()
    except tf.errors.NotFoundError as error:
        raise ImageFileError(f"{path}: not a readable PNG or JPEG image ({_reason(error)})") from None
    try:
        check_bytes(data, max_side, max_pixels)
    except ImageTooLarge as error:
        raise ImageFileError(f"{path}: {error}") from None
    if not is_png_or_jpeg(data):
        raise ImageFileError(f"{path}: not a readable PNG or JPEG image (the bytes are neither)")
    return data


def read_gray(path, max_side: int = MAX_IMAGE_SIDE, max_pixels: int = MAX_IMAGE_PIXELS):
    """Any PNG / JPEG file (gray, RGB, RGBA, 8 or 16 bit) -> uint8 [H, W, 1]: the sharder's gray, as the
    serving graph decodes it (pixels.decode_gray_tf), so the tools and a SavedModel read the same pixels.

    A header declaring more than max_side pixels a side or max_pixels in all is refused
    (ImageFileError) before decoding, whatever the format; so is a file that is not a readable PNG or JPEG.
    """
    import tensorflow as tf

    data = checked_bytes(path, max_side, max_pixels)
    try:
        return pixels.decode_gray_tf(tf.constant(data))
    except tf.errors.InvalidArgumentError as error:
        raise ImageFileError(f"{path}: not a readable PNG or JPEG image ({_reason(error)})") from None


def _reason(error) -> str:
    """A TensorFlow error's first line without its op decoration."""
    return re.sub(r"\{\{.*?\}\}\s*|\s*\[Op:.*", "", error.message.splitlines()[0])


def _graph_header(image_bytes):
    """string scalar -> its first PNG_HEADER_BYTES bytes (zero-padded when shorter), and as int64 [24]."""
    import tensorflow as tf

    head = tf.strings.substr(image_bytes, 0, PNG_HEADER_BYTES)  # shorter when the bytes are
    head = tf.strings.substr(tf.strings.join([head, b"\0" * PNG_HEADER_BYTES]), 0, PNG_HEADER_BYTES)
    return head, tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)


def assert_within_limits(image_bytes, index, max_side, max_pixels, name="image"):
    """The assert op that lets one PNG / JPEG through to its decoder (libpng / libjpeg).

    Fails with InvalidArgumentError '<name>: image <index> ...': not a PNG or JPEG; a PNG whose first
    chunk is not IHDR; or a header declaring more than the limits ('declares WxH pixels ...').
    """
    import tensorflow as tf

    head, header = _graph_header(image_bytes)
    is_png = tf.strings.substr(head, 0, len(PNG_SIGNATURE)) == PNG_SIGNATURE
    is_jpeg = tf.strings.substr(head, 0, len(JPEG_SIGNATURE)) == JPEG_SIGNATURE
    ihdr_first = tf.strings.substr(head, 12, 4) == b"IHDR"
    prefix = f"{name}: image {{}} "
    checks = [
        tf.debugging.Assert(tf.logical_or(is_png, is_jpeg),
                            [tf.strings.format(prefix + "is not a PNG or JPEG image", [index])]),
        tf.debugging.Assert(tf.logical_or(tf.logical_not(is_png), ihdr_first),
                            [tf.strings.format(prefix + "is not a well-formed PNG: its first chunk is not IHDR", [index])]),
    ]
    big_endian = tf.constant([2**24, 2**16, 2**8, 1], tf.int64)
    png_size = tf.stack([tf.reduce_sum(header[20:24] * big_endian), tf.reduce_sum(header[16:20] * big_endian)])
    with tf.control_dependencies(checks):
        height, width = tf.unstack(tf.cond(
            is_png, lambda: png_size,
            lambda: tf.cast(tf.image.extract_jpeg_shape(image_bytes)[:2], tf.int64)))  # libjpeg's header only
    max_side, max_pixels = tf.cast(max_side, tf.int64), tf.cast(max_pixels, tf.int64)
    within = tf.logical_and(tf.maximum(height, width) <= max_side, height * width <= max_pixels)
    message = tf.strings.format(prefix + limit_message("{}", "{}", "{}", "{}"),
                                [index, width, height, max_side, max_pixels])
    return tf.debugging.Assert(within, [message])


def assert_shape_within_limits(tensor, max_side, max_pixels, name, scale=1):
    """An assert op on a float input [B, H, W, C]: its images, H*scale x W*scale (scale: the decoder's
    upsampling for a latent), within the limits; read from the shape alone, before any work.

    Fails with InvalidArgumentError '<name>: shape [B, H, W, C] is (reconstructs) WxH pixels ...'.
    """
    import tensorflow as tf

    shape = tf.shape(tensor, out_type=tf.int64)
    height, width = shape[1] * scale, shape[2] * scale
    max_side, max_pixels = tf.cast(max_side, tf.int64), tf.cast(max_pixels, tf.int64)
    within = tf.logical_and(tf.maximum(height, width) <= max_side, height * width <= max_pixels)
    verb = "is" if scale == 1 else f"reconstructs ({scale}x a side)"
    message = tf.strings.format(f"{name}: shape {{}} " + limit_message("{}", "{}", "{}", "{}", verb),
                                [shape, width, height, max_side, max_pixels])
    return tf.debugging.Assert(within, [message])
