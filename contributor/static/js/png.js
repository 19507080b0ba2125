// PNG decoding for image jobs, as bim_core/png.py's png_size and png_decode read a
// file: only 8-bit truecolour (RGB, no alpha), raw samples (gamma, colour profiles and a
// tRNS colour ignored), so that every node, browser or Python (Pillow), sees the same
// pixels. The browser's own decoders (<img>, createImageBitmap, a canvas) are not used:
// they colour-manage and premultiply, and which they do differs between browsers.
//
// What Pillow accepts and this module refuses (the job is then given back, never
// computed differently): a zlib stream whose checksum or trailing bytes the browser's
// DecompressionStream rejects. A chunk before the image data must have its CRC, as Pillow
// checks it; the image data is the first run of consecutive IDAT chunks, and what follows it
// is not read.
//
// Pure: runs in the engine's worker and under Node 20 (tests/js/png.test.mjs).

export const PNG_SIGNATURE = Uint8Array.of(0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a);
const CHANNELS = 3; // truecolour, 8 bits a sample: 3 bytes a pixel

export class PngError extends Error {
  constructor(message) {
    super(message);
    this.name = "PngError";
  }
}

const u32 = (bytes, at) => ((bytes[at] << 24) | (bytes[at + 1] << 16) | (bytes[at + 2] << 8) | bytes[at + 3]) >>> 0;
const chunkType = (bytes, at) => String.fromCharCode(bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]);

/** {height, width} from the header alone, refusing anything but 8-bit RGB: the checks of
 * bim_core.png.png_size, in its order and with its messages. */
export function pngSize(bytes) {
  if (bytes.length < 33 || !PNG_SIGNATURE.every((b, i) => bytes[i] === b) || chunkType(bytes, 12) !== "IHDR") {
    throw new PngError("image must be a PNG file");
  }
  if (bytes[24] !== 8 || bytes[25] !== 2) throw new PngError("image must be an 8-bit RGB PNG (no alpha, palette, grey or 16-bit)");
  return { width: u32(bytes, 16), height: u32(bytes, 20) };
}

let crcTable = null;

function crc32(bytes, start, end) {
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let c = 0xffffffff;
  for (let i = start; i < end; i++) c = crcTable[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** The IHDR fields and the concatenated data of the first run of IDAT chunks. */
function chunksRead(bytes) {
  let at = 8;
  let header = null;
  const data = [];
  while (at + 12 <= bytes.length) {
    const length = u32(bytes, at);
    const type = chunkType(bytes, at + 4);
    const end = at + 12 + length;
    if (end > bytes.length) throw new PngError(`image does not decode: chunk ${type} is truncated`);
    if (type === "IDAT") {
      data.push(bytes.subarray(at + 8, at + 8 + length));
    } else if (data.length) {
      break; // the image data ended: what follows is not read (as Pillow reads it)
    } else if (crc32(bytes, at + 4, at + 8 + length) !== u32(bytes, at + 8 + length)) {
      throw new PngError(`image does not decode: broken PNG file (bad header checksum in ${type})`);
    }
    if (type === "IHDR") {
      if (header || length !== 13) throw new PngError("image does not decode: bad IHDR chunk");
      const d = at + 8;
      header = {
        width: u32(bytes, d), height: u32(bytes, d + 4), bitDepth: bytes[d + 8], colorType: bytes[d + 9],
        compression: bytes[d + 10], filter: bytes[d + 11], interlace: bytes[d + 12],
      };
    } else if (!header) {
      throw new PngError("image does not decode: IHDR is not the first chunk");
    }
    at = end;
  }
  if (!header) throw new PngError("image does not decode: no IHDR chunk");
  if (!data.length) throw new PngError("image does not decode: no image data");
  return { header, data };
}

// Adam7's seven passes: [first row, first column, row step, column step].
const ADAM7 = [[0, 0, 8, 8], [0, 4, 8, 8], [4, 0, 8, 4], [0, 2, 4, 4], [2, 0, 4, 2], [0, 1, 2, 2], [1, 0, 2, 1]];

/** The sub-images the data holds, in order: the whole image, or Adam7's non-empty passes. */
export function passesOf(width, height, interlace) {
  if (interlace === 0) return [{ y0: 0, x0: 0, dy: 1, dx: 1, width, height }];
  return ADAM7.map(([y0, x0, dy, dx]) => ({
    y0, x0, dy, dx, width: Math.ceil((width - x0) / dx), height: Math.ceil((height - y0) / dy),
  })).filter((p) => p.width > 0 && p.height > 0);
}

/** The zlib stream's first `needed` bytes (more is not read: Pillow stops there too). */
async function inflate(parts, needed) {
  const stream = new Blob(parts).stream().pipeThrough(new DecompressionStream("deflate"));
  const reader = stream.getReader();
  const out = new Uint8Array(needed);
  let filled = 0;
  try {
    while (filled < needed) {
      const { value, done } = await reader.read();
      if (done) break;
      const take = Math.min(value.length, needed - filled);
      out.set(value.subarray(0, take), filled);
      filled += take;
    }
  } catch (err) {
    throw new PngError(`image does not decode: ${err.message || err}`);
  } finally {
    reader.cancel().catch(() => {});
  }
  if (filled < needed) throw new PngError("image does not decode: image file is truncated");
  return out;
}

function paeth(a, b, c) {
  const p = a + b - c;
  const pa = Math.abs(p - a);
  const pb = Math.abs(p - b);
  const pc = Math.abs(p - c);
  if (pa <= pb && pa <= pc) return a;
  return pb <= pc ? b : c;
}

/** Reverses the scanline filters of one pass: from `offset`, `raw` holds `height` rows of a
 * filter byte and `stride` bytes; returns the rows without their filter bytes. */
export function unfilter(raw, offset, stride, height) {
  const rows = new Uint8Array(stride * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[offset + y * (stride + 1)];
    const src = offset + y * (stride + 1) + 1;
    const row = y * stride;
    const up = row - stride;
    for (let i = 0; i < stride; i++) {
      const a = i >= CHANNELS ? rows[row + i - CHANNELS] : 0;
      const b = y > 0 ? rows[up + i] : 0;
      const c = y > 0 && i >= CHANNELS ? rows[up + i - CHANNELS] : 0;
      let predicted;
      switch (filter) {
        case 0: predicted = 0; break;
        case 1: predicted = a; break;
        case 2: predicted = b; break;
        case 3: predicted = (a + b) >>> 1; break;
        case 4: predicted = paeth(a, b, c); break;
        default: throw new PngError(`image does not decode: unknown filter type ${filter} in row ${y}`);
      }
      rows[row + i] = (raw[src + i] + predicted) & 0xff;
    }
  }
  return rows;
}

/** The pixels of an 8-bit RGB PNG: {width, height, data: Uint8Array (height, width, 3)
 * row-major}, as numpy.asarray(PIL.Image.open(png)) gives them. `maxSide` refuses a larger
 * image before anything is inflated (what the subnet allows). */
export async function pngDecode(bytes, { maxSide = Infinity } = {}) {
  const { width, height } = pngSize(bytes);
  if (width < 1 || height < 1 || Math.max(width, height) > maxSide) {
    throw new PngError(`image is ${width}x${height}; each side must be at most ${maxSide} px`);
  }
  const { header, data } = chunksRead(bytes);
  if (header.compression !== 0 || header.filter !== 0 || (header.interlace !== 0 && header.interlace !== 1)) {
    throw new PngError("image does not decode: unknown compression, filter or interlace method");
  }
  const passes = passesOf(width, height, header.interlace);
  const needed = passes.reduce((sum, p) => sum + p.height * (1 + p.width * CHANNELS), 0);
  const raw = await inflate(data, needed);
  const pixels = new Uint8Array(width * height * CHANNELS);
  let offset = 0;
  for (const p of passes) {
    const stride = p.width * CHANNELS;
    const rows = unfilter(raw, offset, stride, p.height);
    offset += p.height * (stride + 1);
    for (let y = 0; y < p.height; y++) {
      for (let x = 0; x < p.width; x++) {
        const to = ((p.y0 + y * p.dy) * width + p.x0 + x * p.dx) * CHANNELS;
        const from = y * stride + x * CHANNELS;
        pixels[to] = rows[from];
        pixels[to + 1] = rows[from + 1];
        pixels[to + 2] = rows[from + 2];
      }
    }
  }
  return { width, height, data: pixels };
}
