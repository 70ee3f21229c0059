/** f32 to its bits without allocating: one shared pair of views. */
const f32 = new Float32Array(1);
const f32Bits = new Uint32Array(f32.buffer);

/**
 * Packs a kernel's uniform parameters in declaration order. Kernels keep their uniforms to 4-byte
 * scalars (u32, i32, f32), so WGSL's layout is simply consecutive words; the struct is padded to 16.
 * Words are kept as their u32 bits, so a step copies them into its uniform staging as they are.
 */
export class Params {
  private readonly words: number[] = [];

  u32(value: number): this {
    if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) throw new RangeError(`u32 param out of range: ${value}`);
    this.words.push(value);
    return this;
  }

  i32(value: number): this {
    if (!Number.isInteger(value) || value < -0x80000000 || value > 0x7fffffff) throw new RangeError(`i32 param out of range: ${value}`);
    this.words.push(value >>> 0);
    return this;
  }

  f32(value: number): this {
    f32[0] = value;
    this.words.push(f32Bits[0]);
    return this;
  }

  /** Bytes of the struct: the words padded to 16. */
  get byteLength(): number {
    return Math.max(16, Math.ceil(this.words.length / 4) * 16);
  }

  /** Copies the struct (padding zeroed) into `target` from word `at`. */
  writeWords(target: Uint32Array, at: number): void {
    const n = this.byteLength >> 2;
    for (let i = 0; i < n; i++) target[at + i] = i < this.words.length ? this.words[i] : 0;
  }

  bytes(): Uint8Array {
    const words = new Uint32Array(this.byteLength >> 2);
    this.writeWords(words, 0);
    return new Uint8Array(words.buffer);
  }
}
